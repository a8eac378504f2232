"""Start-up: the garbage collector is paused around the heavy imports, and restored."""

from __future__ import annotations

import gc
import subprocess
import sys

from dlvision._startup import collector_paused


def test_collector_paused_restores_the_collector_and_leaves_nothing_young_or_frozen():
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
        made = [[i] for i in range(100_000)]  # what imports do: many tracked, long-lived objects
    assert gc.isenabled() and gc.get_freeze_count() == 0
    assert gc.get_count()[0] < 1000  # handed to the oldest generation, not left for the young passes
    assert gc.is_tracked(made[0]) and len(made) == 100_000
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()  # was off: stays off
    finally:
        gc.enable()


def test_collector_paused_still_collects_garbage_made_afterwards():
    with collector_paused():
        pass

    class Node:
        pass

    node = Node()
    node.self = node  # a cycle: only the cyclic collector frees it
    import weakref

    alive = weakref.ref(node)
    del node
    gc.collect()
    assert alive() is None


def test_the_command_freezes_its_imports_and_importing_the_library_does_not():
    code = ("import contextlib, gc, io, dlvision.cli\n"
            "library = gc.get_freeze_count()\n"
            "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
            "    dlvision.cli.main(['--help'])\n"
            "print(library, gc.get_freeze_count() > 100_000, gc.isenabled())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["0", "True", "True"]
