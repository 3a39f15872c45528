"""Process shells around the pure core (sweeperd/): sweeper workers, mutators, scavenger.

Each shell maps the shared heap, talks to the coordinator over the control plane, and calls
into the pure core for the actual work; it holds no heap state of its own that the others
could not recover if it were killed.
"""
