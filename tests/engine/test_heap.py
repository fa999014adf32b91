"""engine.heap: the libraries' objects are frozen out of the collector's way once, before any model exists."""

from __future__ import annotations

from tests.conftest import run_python


def test_library_objects_are_frozen_once_and_later_objects_are_still_collected():
    check = (
        "import gc, weakref\n"
        "from engine.heap import freeze_library_objects\n"
        "frozen = freeze_library_objects()\n"
        "assert frozen > 100_000, frozen  # torch + diffusers + transformers\n"
        "assert freeze_library_objects() == 0 and 100_000 < gc.get_freeze_count() <= frozen  # once per process\n"
        "class Node: pass\n"
        "a, b = Node(), Node(); a.other, b.other = b, a  # a cycle made after the freeze, like a dropped model's\n"
        "alive = weakref.ref(a); del a, b\n"
        "gc.collect()\n"
        "assert alive() is None\n"
        "print(frozen)\n"
    )
    done = run_python(check, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.strip()) > 100_000
