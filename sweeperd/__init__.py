"""sweeperd: the sweep phase and page scavenger of a Go-style GC'd heap, on real shared memory."""

__version__ = "0.1.0"
