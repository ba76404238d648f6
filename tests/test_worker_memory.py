"""A reused trial worker hands back what its previous trial freed (trainables.tune_adapter.release_freed_memory)."""
from __future__ import annotations

import ctypes.util
import sys
import threading

import psutil
import pytest

from advtune.trainables.tune_adapter import release_freed_memory


@pytest.mark.skipif(not sys.platform.startswith("linux") or "musl" in (ctypes.util.find_library("c") or ""),
                    reason="malloc_trim is glibc's")
def test_memory_a_finished_trial_thread_freed_goes_back_to_the_os():
    survivors = []

    def trial():  # Ray runs each trial in a new thread: its allocations land in that thread's malloc arena
        freed = []
        for _ in range(2000):
            freed.append(bytearray(100_000))  # below glibc's mmap threshold: arena memory, ~190 MB
            survivors.append(bytearray(64))  # a small live block after each: free() cannot shrink the arena
        del freed

    t = threading.Thread(target=trial)
    t.start()
    t.join()
    me = psutil.Process()
    held = me.memory_full_info().uss
    release_freed_memory()
    returned = held - me.memory_full_info().uss
    assert returned > 100 * 2**20, f"only {returned / 2**20:.0f} MB of ~190 MB freed went back to the OS"
