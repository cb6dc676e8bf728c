"""scripts/client: NodeClient against a real aiohttp server on 127.0.0.1.

Retry on 503 with the node's Retry-After, failover to the next node, bounded answers, the
node's error JSON surfaced, the light block forms, consortium keys from /status; single
attempts that say what went wrong (the answer, or the transport error), per-call timeouts,
clients of several nodes over one pool. Backoff
sleeps are recorded instead of slept, so nothing here depends on the clock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from node import codec, ledger
from node.api import msgpack_tx_body
from scripts.client import (
    NO_RETRY,
    NodeClient,
    NodeError,
    RetryPolicy,
    Unreachable,
    consortium_from_status,
)
from scripts.provision import free_ports
from tests.unit.helpers_ledger import CLIENT_KEYS, CONSORTIUM, HOSPITALS

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
FAST = RetryPolicy(attempts=4, backoff_min_s=0.001, backoff_max_s=0.002)


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


async def _serve(routes: dict[tuple[str, str], Handler]) -> TestServer:
    app = web.Application()
    for (method, path), handler in routes.items():
        app.router.add_route(method, path, handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


def _url(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
async def servers() -> AsyncIterator[list[TestServer]]:
    started: list[TestServer] = []
    yield started
    for server in started:
        await server.close()


def _envelopes(count: int) -> list[ledger.TxEnvelope]:
    return [
        ledger.make_transaction(CLIENT_KEYS[0][0], HOSPITALS[0], f"p-{i}", "lab-result", b"x")
        for i in range(count)
    ]


async def test_post_retries_503_honouring_retry_after(servers: list[TestServer]) -> None:
    answers = [503, 503, 202]
    bodies: list[bytes] = []

    async def post_tx(request: web.Request) -> web.Response:
        bodies.append(await request.read())
        status = answers.pop(0)
        if status == 503:
            return web.json_response(
                {"error": "overloaded"}, status=503, headers={"Retry-After": "2"}
            )
        return web.json_response({"accepted": [], "rejected": []}, status=202)

    servers.append(await _serve({("POST", "/tx"): post_tx}))
    sleeps = Sleeps()
    body = msgpack_tx_body(_envelopes(3))
    async with NodeClient(_url(servers[0]), retry=FAST, sleep=sleeps) as client:
        answer = await client.post_tx_body(body)
    assert answer.status == 202
    assert bodies == [body] * 3  # the same bytes every time
    assert len(sleeps.delays) == 2 and all(d >= 2.0 for d in sleeps.delays)


async def test_retry_after_is_capped_by_the_policy(servers: list[TestServer]) -> None:
    async def busy(request: web.Request) -> web.Response:
        return web.json_response({"error": "busy"}, status=503, headers={"Retry-After": "3600"})

    servers.append(await _serve({("GET", "/status"): busy}))
    sleeps = Sleeps()
    policy = RetryPolicy(attempts=3, retry_after_max_s=0.5)
    async with NodeClient(_url(servers[0]), retry=policy, sleep=sleeps) as client:
        with pytest.raises(NodeError, match="failed after 3 attempt"):
            await client.status()
    assert sleeps.delays and max(sleeps.delays) <= 0.5


async def test_fails_over_to_the_next_node(servers: list[TestServer]) -> None:
    seen: list[str] = []

    async def status(request: web.Request) -> web.Response:
        seen.append(request.host)
        return web.json_response({"height": 7})

    servers.append(await _serve({("GET", "/status"): status}))
    dead = f"http://127.0.0.1:{free_ports(1)[0]}"
    sleeps = Sleeps()
    async with NodeClient([dead, _url(servers[0])], retry=FAST, sleep=sleeps) as client:
        assert (await client.status())["height"] == 7
        assert client.url == _url(servers[0])  # it stays with the node that answers
    assert len(seen) == 1 and len(sleeps.delays) == 1


async def test_no_retry_gives_up_at_once_on_a_dead_node() -> None:
    dead = f"http://127.0.0.1:{free_ports(1)[0]}"
    async with NodeClient(dead, retry=NO_RETRY) as client:
        with pytest.raises(NodeError, match="failed after 1 attempt"):
            await client.status()
        with pytest.raises(Unreachable):
            await client.send("GET", "/status")


async def test_answers_are_bounded(servers: list[TestServer]) -> None:
    async def big(request: web.Request) -> web.Response:
        return web.json_response({"blocks": ["x" * 5000]})

    async def streamed(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()  # chunked: no Content-Length to refuse up front
        await resp.prepare(request)
        for _ in range(10):
            await resp.write(b"x" * 1000)
        await resp.write_eof()
        return resp

    servers.append(await _serve({("GET", "/blocks"): big, ("GET", "/status"): streamed}))
    async with NodeClient(_url(servers[0]), max_body_bytes=1000, retry=FAST) as client:
        with pytest.raises(NodeError, match="exceeds 1000"):
            await client.blocks(1, 10)
        with pytest.raises(NodeError, match="exceeds 1000"):
            await client.status()


async def test_error_json_is_surfaced_and_final(servers: list[TestServer]) -> None:
    posts: list[int] = []

    async def post_tx(request: web.Request) -> web.Response:
        posts.append(1)
        return web.json_response(
            {"error": "no transaction accepted", "detail": "tx 0: bad signature"}, status=422
        )

    async def missing(request: web.Request) -> web.Response:
        return web.json_response({"error": "not found", "detail": "no block 9"}, status=404)

    servers.append(await _serve({("POST", "/tx"): post_tx, ("GET", "/blocks/{h}"): missing}))
    async with NodeClient(_url(servers[0]), retry=FAST) as client:
        with pytest.raises(NodeError, match=r"\(422\): no transaction accepted: tx 0") as info:
            await client.submit(_envelopes(2), deadline=None)
        assert info.value.status == 422
        assert info.value.error == "no transaction accepted: tx 0: bad signature"
        with pytest.raises(NodeError, match="answered 404: not found: no block 9"):
            await client.block(9)
    assert posts == [1]  # a refusal is not retried


async def test_submit_resends_only_what_was_turned_away(servers: list[TestServer]) -> None:
    batches: list[int] = []

    async def post_tx(request: web.Request) -> web.Response:
        items = codec.unpack(await request.read())
        assert isinstance(items, tuple)
        batches.append(len(items))
        rejected = [{"index": 1, "error": "mempool full"}] if len(batches) == 1 else []
        return web.json_response({"accepted": [], "rejected": rejected}, status=202)

    servers.append(await _serve({("POST", "/tx"): post_tx}))
    async with NodeClient(_url(servers[0]), retry=FAST, sleep=Sleeps()) as client:
        assert await client.submit(_envelopes(3), deadline=None) == _url(servers[0])
    assert batches == [3, 1]


async def test_blocks_pages_in_every_form(servers: list[TestServer]) -> None:
    queries: list[dict[str, str]] = []

    async def blocks(request: web.Request) -> web.Response:
        queries.append(dict(request.query))
        return web.json_response({"blocks": [{"height": 1}], "height": 5, "next": 2})

    servers.append(await _serve({("GET", "/blocks"): blocks}))
    async with NodeClient(_url(servers[0])) as client:
        page = await client.blocks(1, 1, payload=True)
        assert (page.blocks, page.height, page.next) == ([{"height": 1}], 5, 2)
        await client.blocks(1, 50, txs="ids")
        await client.blocks(1, 50, txs="0")
        with pytest.raises(ValueError, match="txs must be"):
            await client.blocks(1, 50, txs="all")
    assert queries == [
        {"from": "1", "limit": "1", "txs": "1", "payload": "1"},
        {"from": "1", "limit": "50", "txs": "ids"},
        {"from": "1", "limit": "50", "txs": "0"},
    ]


async def test_wait_committed_long_polls(servers: list[TestServer]) -> None:
    env = _envelopes(1)[0]
    polls: list[str] = []

    async def get_tx(request: web.Request) -> web.Response:
        polls.append(request.query["wait_ms"])
        if len(polls) == 1:
            return web.json_response({"status": "pending"})
        return web.json_response({"status": "committed", "height": 4})

    servers.append(await _serve({("GET", "/tx/{tx_id}"): get_tx}))
    async with NodeClient(_url(servers[0])) as client:
        assert await client.wait_committed(env, deadline=time.monotonic() + 30) == 4
    assert len(polls) == 2 and all(int(w) > 0 for w in polls)


async def test_consortium_keys_from_status(servers: list[TestServer]) -> None:
    doc = {
        "height": 0,
        "replicas": [{"id": i, "public_key": pk.hex()} for i, pk in enumerate(CONSORTIUM)],
        "clients": [
            {"hospital": h, "public_key": CLIENT_KEYS[i][1].hex()} for i, h in enumerate(HOSPITALS)
        ],
    }

    async def status(request: web.Request) -> web.Response:
        return web.json_response(doc)

    servers.append(await _serve({("GET", "/status"): status}))
    async with NodeClient(_url(servers[0])) as client:
        keys = await client.consortium()
    assert keys.replica_publics == tuple(CONSORTIUM)
    assert keys.source == f"{_url(servers[0])}/status"
    env = _envelopes(1)[0]
    assert ledger.check_tx(env, keys.registry) is None
    with pytest.raises(NodeError, match="does not publish the consortium's keys"):
        consortium_from_status({"height": 0}, "http://n")


async def test_one_attempt_carries_the_answer_or_the_transport_error(
    servers: list[TestServer],
) -> None:
    posts: list[int] = []

    async def post_tx(request: web.Request) -> web.Response:
        posts.append(1)
        return web.json_response({"error": "overloaded"}, status=503, headers={"Retry-After": "1"})

    servers.append(await _serve({("POST", "/tx"): post_tx}))
    async with NodeClient(_url(servers[0]), retry=NO_RETRY) as client:
        with pytest.raises(NodeError) as info:
            await client.post_tx_body(b"\x90")
    assert posts == [1]
    answer = info.value.answer
    assert answer is not None and (answer.status, answer.doc) == (503, {"error": "overloaded"})
    assert info.value.status == 503 and info.value.transport_error is None

    dead = f"http://127.0.0.1:{free_ports(1)[0]}"
    async with NodeClient(dead, retry=NO_RETRY) as client:
        with pytest.raises(NodeError) as info:
            await client.post_tx_body(b"\x90")
    assert info.value.answer is None
    assert isinstance(info.value.transport_error, aiohttp.ClientConnectionError)


async def test_a_gateway_answer_is_unreachable_but_kept(servers: list[TestServer]) -> None:
    async def gateway(request: web.Request) -> web.Response:
        return web.json_response({"error": "bad gateway"}, status=502)

    servers.append(await _serve({("GET", "/status"): gateway}))
    sleeps = Sleeps()
    async with NodeClient(_url(servers[0]), retry=FAST, sleep=sleeps) as client:
        with pytest.raises(Unreachable) as gone:
            await client.send("GET", "/status")
        assert gone.value.answer is not None and gone.value.answer.doc == {"error": "bad gateway"}
        with pytest.raises(NodeError, match="failed after 4 attempt") as info:
            await client.status()
    assert info.value.status == 502 and info.value.answer is not None
    assert len(sleeps.delays) == 3  # retried like a lost answer


async def test_per_call_timeout(servers: list[TestServer]) -> None:
    never = asyncio.Event()

    async def stuck(request: web.Request) -> web.Response:
        await never.wait()
        return web.json_response({})

    servers.append(await _serve({("GET", "/status"): stuck}))
    async with NodeClient(_url(servers[0]), retry=NO_RETRY, timeout_s=60.0) as client:
        with pytest.raises(NodeError) as info:
            await client.status(timeout_s=0.05)
    assert info.value.answer is None
    assert isinstance(info.value.transport_error, TimeoutError)


async def test_clients_of_several_nodes_share_one_pool(servers: list[TestServer]) -> None:
    def status_of(name: str) -> Handler:
        async def status(request: web.Request) -> web.Response:
            return web.json_response({"name": name})

        return status

    for name in ("a", "b"):
        servers.append(await _serve({("GET", "/status"): status_of(name)}))
    sleeps = Sleeps()
    pool = NodeClient(_url(servers[0]), retry=FAST, timeout_s=3.0, connections=0, sleep=sleeps)
    async with pool:
        assert pool.session.connector is not None and pool.session.connector.limit == 0
        other = pool.at(_url(servers[1]), max_body_bytes=100)
        assert other.session is pool.session
        assert (other.retry, other.timeout_s, other.max_body_bytes) == (FAST, 3.0, 100)
        assert other.sleep is sleeps
        assert pool.at(_url(servers[1]), retry=NO_RETRY).retry == NO_RETRY
        assert (await other.status())["name"] == "b"
        await other.close()  # the pool is not the other client's to close
        assert (await pool.status())["name"] == "a"
    with pytest.raises(RuntimeError, match="outside `async with`"):
        pool.at(_url(servers[1]))


async def test_poll_tx_is_one_long_poll(servers: list[TestServer]) -> None:
    polls: list[str] = []

    async def get_tx(request: web.Request) -> web.Response:
        polls.append(request.query["wait_ms"])
        return web.json_response({"error": "not found"}, status=404)

    servers.append(await _serve({("GET", "/tx/{tx_id}"): get_tx}))
    async with NodeClient(_url(servers[0])) as client:
        answer = await client.poll_tx("ab" * 32, 1500, timeout_s=5.0)
    assert (answer.status, answer.doc) == (404, {"error": "not found"})
    assert polls == ["1500"]
