"""Giving memory back to the system after a load."""

from __future__ import annotations

from . import _native


def give_back_memory() -> bool:
    """Starts, once per process, a thread that gives memory freed by a load back to the system.

    glibc keeps what a burst of streams freed (a device process that moved a few hundred
    connections holds some 20 MiB more afterwards, for good). The thread looks every 5 s and
    calls ``malloc_trim`` once a load has passed, never during one, as the ``tunnel-relay``,
    ``tunnel-agent`` and ``tunnel-access`` programs do. Call it once, early, in a long-running
    device or relay script; later calls do nothing more.

    Returns whether the thread runs: ``False`` where the allocator is not glibc's.
    """
    return _native.give_back_memory()
