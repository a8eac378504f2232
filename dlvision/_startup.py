"""Start-up: importing torch, torchvision, torchmetrics and Lightning as fast as Python allows."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for the block (the imports of the heavy libraries).

    Those imports create about a million long-lived objects and hardly any garbage, yet the
    collector's full passes over them took 0.5-0.7 s of a 4-5 s import (measured with
    ``gc.callbacks`` on the circles run). After the block the collector is switched back on, as it
    was, with the new objects in its oldest generation; the ``dlvision`` command then freezes them
    (``freeze_imports``).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        # hand the new objects to the oldest generation without walking them (freeze, then unfreeze:
        # both only move lists): left young, each of the next young-generation passes would walk
        # all of them (about 0.1 s each)
        gc.freeze()
        gc.unfreeze()
        if was_enabled:
            gc.enable()


def freeze_imports() -> None:
    """Move every object alive now out of the collector's reach (``gc.freeze``), for a command's
    process right after its imports: those objects live until the process ends anyway, and the
    collector's next passes would walk them all again (0.2-0.4 s). Not for library use: it would
    also freeze the caller's objects."""
    gc.freeze()
