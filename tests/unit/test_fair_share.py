"""The rule by which `dicomgw serve`'s processes share a client's connections (pure logic; the
end-to-end split is tested in tests/e2e/test_serve.py)."""

from __future__ import annotations

import copy
import subprocess
import sys

from dicomgw_gateway.workers import PAUSE_CAP, PAUSE_PER_EXCESS, Loads, pause_before_accept


def test_the_least_busy_process_accepts_at_once() -> None:
    assert pause_before_accept(0, [0]) == 0
    assert pause_before_accept(3, [3, 5]) == 0
    assert pause_before_accept(0, []) == 0


def test_a_busier_process_waits_longer_the_busier_it_is_up_to_a_cap() -> None:
    assert pause_before_accept(1, [0]) == PAUSE_PER_EXCESS
    assert pause_before_accept(3, [1, 4]) == 2 * PAUSE_PER_EXCESS
    assert pause_before_accept(100, [0]) == PAUSE_CAP


def _worker_view(loads: Loads) -> Loads:
    """Another process's view of the same shared array (each process has its own slot)."""
    other = copy.copy(loads)
    other.slot = -1
    return other


def test_each_process_sees_the_others_counts_and_a_released_slot_is_free_again() -> None:
    first = Loads(3)
    first.claim()
    second = _worker_view(first)
    second.claim()
    assert {first.slot, second.slot} == {0, 1}
    first.publish(4)
    second.publish(1)
    assert first.others() == [1] and second.others() == [4]
    second.release()
    assert first.others() == []
    third = _worker_view(first)
    third.claim()
    assert third.slot == 1


def test_the_slot_of_a_killed_process_is_freed_by_the_others() -> None:
    loads = Loads(2)
    loads.claim()
    loads.publish(3)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    values = loads.array.get_obj()
    values[2], values[3] = dead_pid, 0  # a worker killed with -9 left its slot claimed, idle
    assert loads.others() == []  # it would have made this process wait for nobody
    assert values[2] == 0
    other = _worker_view(loads)
    other.claim()
    assert other.slot == 1
