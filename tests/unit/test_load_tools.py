"""The load tools under faults: every accepted transaction is checked (accepted_committed),
clients fail over on a shared health table, the bench's process monitor follows restarts,
and a scenario's load is a rate or a share of the measured peak."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from scripts import history
from scripts.bench.drive import UsageSampler
from scripts.bench.loadrun import LoadRun
from scripts.bench.loadspec import TX_ACCEPTED, ClientKey, LoadSpec
from scripts.bench.pool import build_pool
from scripts.client import (
    NO_RETRY,
    SUSPECT_MAX_S,
    SUSPECT_MIN_S,
    NodeClient,
    NodeError,
    NodeHealth,
)
from scripts.history import BlockSummary, TxRecord
from scripts.scenario.analyse import FaultSpan, node_fates
from scripts.scenario.params import ScenarioError, parse_scenario
from scripts.scenario.peak import PeakCache

# ---------------------------------------------------------------------------- history


def _acked(tx: str, node: int, commit: bool = False) -> TxRecord:
    return TxRecord(tx, 1.0, node, 1.01, None, commit_s=2.0 if commit else None, commit_node=node)


def _chain(*blocks: tuple[str, ...]) -> list[BlockSummary]:
    return [BlockSummary(h, f"h{h}-" + "-".join(b), b) for h, b in enumerate(blocks, 1)]


def test_every_accepted_transaction_is_checked_not_only_seen_commits() -> None:
    records = [_acked("a", 0, commit=True), _acked("b", 0), _acked("c", 1)]
    full = _chain(("a", "b"), ("c",))
    check, lost = history.check_accepted(records, {0: full, 1: full, 2: full}, {})
    assert check.ok and lost == []
    # "b" was accepted by node 0 (killed), its commit never seen, and is on no chain: the old
    # checks (commits seen) pass, the new one names it, its node and that node's fate.
    partial = _chain(("a",), ("c",))
    chains = {0: partial, 1: partial, 2: partial}
    assert all(c.ok for c in history.check_history(records, chains))
    fates = {0: ["killed at 4.0s-12.0s"]}
    check, lost = history.check_accepted(records, chains, fates)
    assert not check.ok and [u.tx_id for u in lost] == ["b"]
    assert lost[0].node == 0 and lost[0].fate == "killed at 4.0s-12.0s"
    assert "1 accepted by node 0 (killed at 4.0s-12.0s)" in check.detail
    assert "missing" in check.violations[0] and "tx b accepted by node 0" in check.violations[0]


def test_accepted_twice_on_one_chain_or_missing_on_one_is_reported() -> None:
    records = [_acked("a", 1)]
    good, twice = _chain(("a",)), _chain(("a",), ("a",))
    _, lost = history.check_accepted(records, {0: good, 1: twice}, {})
    assert len(lost) == 1 and "node 1: at [1, 2]" in lost[0].where
    _, lost = history.check_accepted(records, {0: good, 1: _chain()}, {})
    assert lost[0].where == "node 1: missing" and lost[0].fate == "no fault"


def test_a_202_from_a_byzantine_node_promises_nothing() -> None:
    # Node 3 is left out of the honest chains: what it accepted is not held against anyone.
    check, lost = history.check_accepted([_acked("x", 3)], {0: _chain(), 1: _chain()}, {})
    assert check.ok and lost == []


def test_node_fates_name_what_the_timeline_did() -> None:
    spans = [
        FaultSpan("kill primary", "kill", [0], 4.0, {}, healed_s=12.0),
        FaultSpan("restart 1", "restart", [1], 3.0, {}, healed_s=5.0),
        FaultSpan("partition", "partition", [0, 1, 2, 3], 1.0, {"groups": [[2], [0, 1, 3]]}),
    ]
    fates = node_fates(spans)
    assert fates[0][0] == "killed at 4.0s-12.0s"
    assert fates[1][0] == "restarted at 3.0s"
    assert fates[2] == ["partitioned [[2], [0, 1, 3]] at 1.0s-end"]


# ----------------------------------------------------------------------------- health


def test_health_suspects_a_failed_node_backs_off_and_forgives() -> None:
    now = [100.0]
    health = NodeHealth(clock=lambda: now[0])
    urls = ["http://a", "http://b", "http://c"]
    assert health.choose(urls, 0) == 0
    health.failed("http://a")
    assert health.suspect("http://a") and health.choose(urls, 0) == 1
    now[0] += SUSPECT_MIN_S + 0.01
    assert not health.suspect("http://a")
    health.failed("http://a")  # a second strike doubles the hold
    now[0] += SUSPECT_MIN_S + 0.01
    assert health.suspect("http://a")
    health.answered("http://a")
    assert not health.suspect("http://a")
    # Retry-After is honoured up to the bound; with every node suspect, the soonest wins.
    health.failed("http://a", retry_after_s=100.0)
    health.failed("http://b", retry_after_s=2.0)
    health.failed("http://c", retry_after_s=1.0)
    assert health.choose(urls, 0) == 2
    assert health.wait_s(urls) == pytest.approx(1.0)
    now[0] += SUSPECT_MAX_S - 0.01
    assert health.suspect("http://a")


def test_a_node_failing_for_long_is_held_at_most_the_bound() -> None:
    # A node that did not answer for minutes under load struck thousands of times and the
    # doubling hold overflowed a float (OverflowError in every request of the bench).
    now = [0.0]
    health = NodeHealth(clock=lambda: now[0])
    for _ in range(5000):
        health.failed("http://a")
    assert health.wait_s(["http://a"]) == pytest.approx(SUSPECT_MAX_S)
    health.answered("http://a")
    health.failed("http://a")
    assert health.wait_s(["http://a"]) == pytest.approx(SUSPECT_MIN_S)


async def test_client_moves_off_a_dead_node_at_once_and_remembers() -> None:
    hits: list[str] = []

    async def post_tx(request: web.Request) -> web.Response:
        hits.append("alive")
        return web.json_response({"accepted": ["00"], "rejected": []}, status=202)

    app = web.Application()
    app.router.add_post("/tx", post_tx)
    dead = _free_port_url()
    async with TestServer(app) as server:
        alive = str(server.make_url("")).rstrip("/")
        async with NodeClient([dead, alive], retry=NO_RETRY, timeout_s=2.0) as client:
            start = time.monotonic()
            with pytest.raises(NodeError) as refused:
                await client.at(dead).post_tx_body(b"x")  # refused: one attempt, no answer
            assert refused.value.answer is None
            assert client.health.suspect(dead)
            # A client over both nodes now goes straight to the live one.
            both = client.at([dead, alive])
            answer = await both.post_tx_body(b"x")
            assert answer.status == 202 and answer.url == alive and hits == ["alive"]
            assert time.monotonic() - start < 10  # bounded, never the node's full timeout


async def test_client_fails_over_within_one_request_on_503() -> None:
    async def busy(request: web.Request) -> web.Response:
        return web.json_response({"error": "overloaded"}, status=503, headers={"Retry-After": "1"})

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"accepted": [], "rejected": []}, status=202)

    apps = []
    for handler in (busy, ok):
        app = web.Application()
        app.router.add_post("/tx", handler)
        apps.append(app)
    async with TestServer(apps[0]) as s1, TestServer(apps[1]) as s2:
        urls = [str(s.make_url("")).rstrip("/") for s in (s1, s2)]
        slept: list[float] = []

        async def sleep(s: float) -> None:
            slept.append(s)

        async with NodeClient(urls, sleep=sleep) as client:
            answer = await client.post_tx_body(b"x")
        assert answer.status == 202 and answer.url == urls[1]
        assert slept == [0.0], "the next node is tried at once, not after the Retry-After"


def _free_port_url() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# ------------------------------------------------------------------- process monitor


def test_usage_sampler_follows_a_restarted_node() -> None:
    first = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    second: subprocess.Popen[bytes] | None = None
    current = {0: first.pid}
    try:
        sampler = UsageSampler([first.pid], None, resolve=lambda i: current.get(i))
        sampler.prime()
        sampler.sample()
        assert not sampler.down
        first.kill()
        first.wait(10)
        current.pop(0)
        sampler.sample()
        assert sampler.down == {0} and sampler.all_dead and sampler.died == {0}
        second = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        current[0] = second.pid
        sampler.sample()
        assert not sampler.down and not sampler.all_dead
        assert sampler.restarts == {0: 1} and sampler.procs[0] is not None
        assert sampler.procs[0].pid == second.pid
        # Without a resolver (a cluster the bench did not start), a dead node stays dead.
        blind = UsageSampler([second.pid], None)
        second.kill()
        second.wait(10)
        blind.sample()
        assert blind.all_dead
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(10)


# --------------------------------------------------------------------- load and peak


def _doc(**extra: Any) -> dict[str, Any]:
    return {"duration_s": 10, **extra}


def test_scenario_load_is_a_rate_or_a_share_of_the_peak() -> None:
    assert parse_scenario(_doc(load="peak"), name="x").load == 1.0
    half = parse_scenario(_doc(load=0.5), name="x")
    assert half.load == 0.5 and half.rate is None
    rate = parse_scenario(_doc(rate=1300), name="x")
    assert rate.rate == 1300.0 and rate.load is None
    assert parse_scenario(_doc(), name="x").rate == 20.0
    for bad, message in [
        (_doc(load="most"), "peak"),
        (_doc(load=0), "share of the peak"),
        (_doc(load=9), "share of the peak"),
        (_doc(load=True), "peak"),
        (_doc(load=0.5, rate=10), "give one"),
    ]:
        with pytest.raises(ScenarioError, match=message):
            parse_scenario(bad, name="x")


def test_peak_is_measured_once_per_cluster_shape(tmp_path: Path) -> None:
    cache = PeakCache(tmp_path, 2000.0, seed=1, quiet=True)
    four = parse_scenario(_doc(load=0.5), name="a")
    rate, info = cache.rate(four, 0.5)
    assert rate == 1000.0 and info["peak_tx_s"] == 2000.0 and info["peak"]["cached"] is False
    again, info = cache.rate(parse_scenario(_doc(load=1.0), name="b"), 1.0)
    assert again == 2000.0 and info["peak"]["cached"] is True
    other = parse_scenario(_doc(load=0.5, consensus={"view_timeout_ms": 1000}), name="c")
    assert cache.rate(other, 0.5)[1]["peak"]["cached"] is False


# ------------------------------------------------------------- the bench's load generator


def _fake_node(post_tx: Any) -> web.Application:
    """A node's POST /tx (``post_tx``) and a GET /status at height 0."""

    async def status(request: web.Request) -> web.Response:
        return web.json_response({"height": 0, "view": 0, "counters": {}})

    app = web.Application()
    app.router.add_post("/tx", post_tx)
    app.router.add_get("/status", status)
    return app


def _open_loop(
    targets: tuple[str, ...], observe_url: str, pool_size: int, duration_s: float, drain_s: float
) -> LoadSpec:
    """1,000 tx/s of 16-byte records, 10 a request, from one client key, no warmup."""
    return LoadSpec(
        targets=targets,
        keys=(ClientKey("hospital-0", b"\x07" * 32),),
        observe_url=observe_url,
        payload_size=16,
        client_batch=10,
        pool_size=pool_size,
        seed=1,
        warmup_s=0.0,
        duration_s=duration_s,
        count=None,
        rate=1000.0,
        concurrency=None,
        drain_s=drain_s,
    )


async def test_load_generator_moves_requests_off_a_dead_node() -> None:
    """Half the pre-built requests target a node that refuses connections: each goes to the
    live node instead, and once the dead node is suspect new requests skip it altogether."""
    posts = 0

    async def post_tx(request: web.Request) -> web.Response:
        nonlocal posts
        posts += 1
        await request.read()
        return web.json_response({"accepted": [], "rejected": []}, status=202)

    dead = _free_port_url()
    async with TestServer(_fake_node(post_tx)) as server:
        alive = str(server.make_url("")).rstrip("/")
        # The observer starts on the dead node: it must move off it too.
        spec = _open_loop((dead, alive), dead, pool_size=400, duration_s=0.4, drain_s=0.5)
        run = LoadRun(spec, build_pool(spec), lambda live: None)
        result = await run.run()
    accepted = [i for i in range(result.pool_size) if result.outcome[i] == TX_ACCEPTED]
    assert len(accepted) == result.pool_size, result.errors
    assert {result.acked_by[i] for i in accepted} == {1}
    assert posts == 40  # every request, once, at the live node
    refused = sum(v for k, v in result.errors.items() if k.startswith("connection"))
    assert 1 <= refused < 20, "only the first requests meet the dead node"
    assert len(result.status) > 0, "the observer moved to the live node"


async def test_load_generator_honours_retry_after_when_every_node_is_overloaded() -> None:
    """The node answers 503 with Retry-After: 1 at first: the load generator sends it nothing
    more until that second is over (it used to retry after 20 ms, doubling), then resubmits
    and every transaction is accepted."""
    arrivals: list[float] = []
    first_503: list[float] = []

    async def post_tx(request: web.Request) -> web.Response:
        await request.read()
        now = time.monotonic()
        arrivals.append(now)
        if not first_503 or now - first_503[0] < 0.3:
            first_503.append(now)
            return web.json_response(
                {"error": "overloaded"}, status=503, headers={"Retry-After": "1"}
            )
        return web.json_response({"accepted": [], "rejected": []}, status=202)

    async with TestServer(_fake_node(post_tx)) as server:
        url = str(server.make_url("")).rstrip("/")
        spec = _open_loop((url,), url, pool_size=100, duration_s=0.1, drain_s=4.0)
        run = LoadRun(spec, build_pool(spec), lambda live: None)
        result = await run.run()
    t0 = first_503[0]
    early = [t - t0 for t in arrivals if 0.05 < t - t0 < 0.9]
    assert early == [], f"requests sent inside the node's Retry-After: {early}"
    accepted = [i for i in range(result.pool_size) if result.outcome[i] == TX_ACCEPTED]
    assert len(accepted) == result.pool_size, result.errors
