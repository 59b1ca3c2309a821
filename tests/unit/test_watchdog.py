"""The worker's stall watchdog decides from what it sees: work waiting, a free slot, time since the
last message taken."""

from __future__ import annotations

from dicomgw_worker.watchdog import Watchdog


def dog() -> Watchdog:
    d = Watchdog("redis://127.0.0.1:1/0", ["verify"], concurrency=2, stall_seconds=30)
    d.last_taken = 0.0
    return d


def test_work_waiting_with_a_free_slot_and_nothing_taken_is_a_stall() -> None:
    d = dog()
    assert not d.stalled(busy=0, waiting=5, now=29)
    assert d.stalled(busy=1, waiting=5, now=31)


def test_taking_a_message_resets_the_clock() -> None:
    d = dog()
    d.last_taken = 20.0
    assert not d.stalled(busy=0, waiting=5, now=40)
    assert d.stalled(busy=0, waiting=5, now=51)


def test_a_full_pool_or_empty_queues_or_an_absent_broker_are_not_stalls() -> None:
    d = dog()
    assert not d.stalled(busy=2, waiting=5, now=100)  # every slot busy: the work waits its turn
    assert not d.stalled(busy=0, waiting=5, now=129)  # ... and the clock starts when a slot frees
    assert not d.stalled(busy=0, waiting=0, now=200)
    assert not d.stalled(busy=0, waiting=None, now=300)  # Redis away: nothing to take
    assert not d.stalled(busy=0, waiting=3, now=330)
    assert d.stalled(busy=0, waiting=3, now=331)


def test_an_unreachable_broker_reports_nothing_waiting() -> None:
    assert dog().waiting() is None
