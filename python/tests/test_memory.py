"""tunnel.give_back_memory: one thread per process, which hands freed memory back."""

from __future__ import annotations

import os
import platform
import sys
import time

import pytest

import tunnel

GLIBC = sys.platform == "linux" and platform.libc_ver()[0] == "glibc"


def threads_named(name: str) -> int:
    tasks = f"/proc/{os.getpid()}/task"
    count = 0
    for task in os.listdir(tasks):
        try:
            with open(f"{tasks}/{task}/comm") as f:
                count += f.read().strip() == name
        except FileNotFoundError:  # the thread ended meanwhile
            pass
    return count


@pytest.mark.skipif(not GLIBC, reason="glibc's allocator only")
def test_the_memory_thread_starts_once_however_often_it_is_asked_for():
    assert tunnel.give_back_memory() is True
    assert tunnel.give_back_memory() is True
    # A new thread names itself once it runs: up to 2 s for that.
    for _ in range(200):
        if threads_named("give-back-mem"):
            break
        time.sleep(0.01)
    assert threads_named("give-back-mem") == 1


@pytest.mark.skipif(GLIBC, reason="elsewhere than glibc")
def test_without_glibc_nothing_starts():
    assert tunnel.give_back_memory() is False
