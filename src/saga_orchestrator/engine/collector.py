"""Garbage-collector settings for a process whose main work is driving sagas.

With many sagas in flight, nearly everything allocated while a batch commits is still
referenced when the young generation fills (700 allocations by default): it survives, is
promoted, and the older generations fill and are collected over and over, each full collection
traversing the whole heap, start-up objects (modules, classes, compiled definitions) included.
Measured on the engine benchmark: the collector took about a fifth of the event loop's time,
and freezing the start-up heap plus a young threshold of 50,000 cut the loop's CPU per saga by
about 20 % (docs/performance.md).

This changes process-wide state, so a library must not do it behind its host's back: an
embedding application opts in (``Orchestrator(..., tune_gc=True)`` or by calling
:func:`tune_garbage_collector` itself once it has started up); ``saga serve``, which owns its
process, does it at start-up.
"""

from __future__ import annotations

import gc

THROUGHPUT_THRESHOLDS = (50_000, 50, 1_000)
"""Young, middle and old generation thresholds: a young collection every 50,000 net
allocations instead of 700 (the cost of a collection grows with what survives, not with the
threshold, so fewer collections cost less in all); a middle one every 50 young ones; a full one
at most every 1,000 middle ones (CPython also waits until a quarter of the old heap is new).
"""


class _Process:
    frozen = False
    """The start-up heap is frozen once per process: a second freeze would also pin whatever a
    host (or a test suite opening many orchestrators) allocated since, cyclic garbage included,
    for the rest of the process."""


def tune_garbage_collector() -> bool:
    """Collect, freeze the surviving start-up objects out of every later collection, and raise
    the generation thresholds to :data:`THROUGHPUT_THRESHOLDS`. Call it once start-up is done
    (modules imported, store opened). Idempotent: later calls only re-apply the thresholds.
    Returns whether this call froze the heap (True only the first time in a process)."""
    gc.set_threshold(*THROUGHPUT_THRESHOLDS)
    if _Process.frozen:
        return False
    # Collect first: garbage frozen now would never be reclaimed by the cyclic collector.
    gc.collect()
    gc.freeze()
    _Process.frozen = True
    return True


__all__ = ["THROUGHPUT_THRESHOLDS", "tune_garbage_collector"]
