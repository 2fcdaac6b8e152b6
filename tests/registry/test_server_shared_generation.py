"""One generation query shared by the cached reads waiting for it (registry_server.fastread, issue 24).

The contract a shared query must keep is the one a query per request kept: a write that
completed before a read arrived is in that read's answer. So a read may share a query that
starts after it arrived, never one already running. These tests drive
:class:`~registry_server.fastread.SharedGeneration` with a stand-in database whose reads
block until released, so every interleaving is chosen, not timed.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
from sqlalchemy.exc import OperationalError

from registry_server.fastread import SharedGeneration


class Database:
    """A generation counter whose reads take their snapshot, then wait for :meth:`release` to answer."""

    def __init__(self) -> None:
        self.generation = 1
        self.started = threading.Semaphore(0)
        self.go = threading.Semaphore(0)
        self.fail: Exception | None = None

    def read(self) -> int:
        snapshot = self.generation
        self.started.release()
        if not self.go.acquire(timeout=30):  # a guard against a hang, not a timing check
            raise AssertionError("a query was never released: more queries ran than the test expected")
        if self.fail is not None:
            raise self.fail
        return snapshot

    async def wait_started(self) -> None:
        for _ in range(30_000):  # a guard against a hang, not a timing check
            if self.started.acquire(blocking=False):
                return
            await asyncio.sleep(0.001)
        raise AssertionError("no query started")

    def release(self) -> None:
        self.go.release()


async def _arrived(task: asyncio.Task) -> None:
    """Let ``task`` run up to its first wait."""
    for _ in range(5):
        await asyncio.sleep(0)
    assert not task.done()


def test_a_read_arriving_during_a_query_waits_for_the_next_one():
    async def run() -> None:
        db = Database()
        shared = SharedGeneration(db.read)
        first = asyncio.create_task(shared.get())
        await db.wait_started()  # the first query has taken its snapshot
        db.generation = 2  # a write completes while that query runs
        second = asyncio.create_task(shared.get())  # a read that arrives after the write completed
        await _arrived(second)
        db.release()
        assert await first == 1
        await db.wait_started()  # the second read needs a query of its own
        db.release()
        assert await second == 2
        assert shared.queries == 2

    asyncio.run(run())


def test_the_reads_waiting_during_a_query_share_the_next_one():
    async def run() -> None:
        db = Database()
        shared = SharedGeneration(db.read)
        first = asyncio.create_task(shared.get())
        await db.wait_started()
        waiting = [asyncio.create_task(shared.get()) for _ in range(50)]
        for task in waiting:
            await _arrived(task)
        db.generation = 7
        db.release()
        assert await first == 1
        await db.wait_started()
        db.release()
        assert await asyncio.gather(*waiting) == [7] * 50
        assert shared.queries == 2
        # Nothing running: the next read starts its own query at once.
        later = asyncio.create_task(shared.get())
        await db.wait_started()
        db.release()
        assert await later == 7 and shared.queries == 3

    asyncio.run(run())


def test_a_database_fault_reaches_every_read_of_that_query_and_the_next_read_asks_again():
    async def run() -> None:
        db = Database()
        shared = SharedGeneration(db.read)
        first = asyncio.create_task(shared.get())
        await db.wait_started()
        db.fail = OperationalError("SELECT", {}, Exception("connection refused"))
        waiting = [asyncio.create_task(shared.get()) for _ in range(3)]
        for task in waiting:
            await _arrived(task)
        db.release()
        with pytest.raises(OperationalError):
            await first
        await db.wait_started()
        db.release()
        for task in waiting:
            with pytest.raises(OperationalError):
                await task
        db.fail = None
        again = asyncio.create_task(shared.get())
        await db.wait_started()
        db.release()
        assert await again == 1 and shared.queries == 3

    asyncio.run(run())


def test_a_read_that_goes_away_does_not_cancel_the_query_others_wait_for():
    async def run() -> None:
        db = Database()
        shared = SharedGeneration(db.read)
        first = asyncio.create_task(shared.get())
        await db.wait_started()
        gone = asyncio.create_task(shared.get())
        stays = asyncio.create_task(shared.get())
        await _arrived(stays)
        gone.cancel()
        db.release()
        assert await first == 1
        await db.wait_started()  # the query gone and stays shared still runs
        db.release()
        assert await stays == 1
        assert gone.cancelled() and shared.queries == 2

    asyncio.run(run())
