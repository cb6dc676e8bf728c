"""The replica's time in a node: each event is stepped at the time it was received.

Under twice the peak load a backup's inbox held seconds of messages; stepped at the time the
consensus task reached them, the first of them fired the view timer although the ones queued
behind it showed the primary committing, and the cluster changed views while the primary was
making progress. Now an event is stepped at its receipt time, the replica's time never goes
backwards, and a tick brings it to the present only once the peer inbox is read.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import node.runtime
from consensus.events import Event, Ready, Receive, Submit
from consensus.messages import FetchRequest
from node.inbox import ClientBatch
from node.ledger import encode_tx
from node.runtime import Node
from tests.unit.test_api import FAST, make_configs, tx


class FakeClock:
    def __init__(self) -> None:
        self.ms = 1_000

    def __call__(self) -> int:
        return self.ms


class SteppedAt:
    """The replica, recording the time each event is stepped at."""

    def __init__(self, replica: Any) -> None:
        self._replica = replica
        self.steps: list[tuple[str, int]] = []

    def step(self, event: Event, now_ms: int) -> Ready:
        self.steps.append((type(event).__name__, now_ms))
        return self._replica.step(event, now_ms)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._replica, name)


async def test_events_are_stepped_at_their_receipt_time_and_the_tick_waits_for_the_inbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    monkeypatch.setattr(node.runtime, "NodeClock", lambda: clock)
    backup = Node(make_configs(tmp_path, consensus=FAST)[1])
    await backup.start()
    try:
        spy = SteppedAt(backup._replica)
        backup._replica = spy  # type: ignore[assignment]
        # No await from here on: the consensus task cannot run in between.
        for sender, at_ms in ((0, 50_000), (2, 50_100), (3, 50_200)):
            clock.ms = at_ms
            backup._peer_inbox.offer(Receive(FetchRequest(1, 1, sender), sender), 10, None)
        clock.ms = 50_150
        backup._client_inbox.push(ClientBatch(_submit(), _future(), 10))
        clock.ms = 59_000  # the consensus task gets to them 9 s later
        full = backup.limits
        backup.limits = replace(full, max_events_per_round=2)
        backup._step_events([], [])  # one peer message and the client batch
        first = list(spy.steps)
        backup.limits = full
        backup._step_events([], [])
    finally:
        backup._replica = spy._replica
        await backup.stop()
    assert first == [("Receive", 50_000), ("Submit", 50_150)], "no tick while messages wait"
    assert spy.steps[2:] == [
        ("Receive", 50_150),  # received at 50,100, but the replica's time never goes back
        ("Receive", 50_200),
        ("Tick", 59_000),
    ]


def _submit() -> Submit:
    env = tx(1)
    return Submit((env.tx_id,), (encode_tx(env),))


def _future() -> asyncio.Future[dict[bytes, str]]:
    return asyncio.get_running_loop().create_future()
