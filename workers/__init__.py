"""Process entry points: the sweeper, mutator and scavenger loops, nothing else.

Each ``main`` maps the shared heap, talks to the coordinator over its link
(``sweeperd.wire.link``), and calls into ``sweeperd`` for the work (``runtime.bgsweep``,
``workload.mutator``, ``pacing.bgscavenge``); it holds no heap state of its own that the others
could not recover if it were killed.
"""
