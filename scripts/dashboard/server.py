"""The dashboard's web server: polls the nodes, serves the page, streams what changes.

    GET /              the page (static/index.html)
    GET /static/NAME   its script and style sheet, shipped in the package (no CDN, no build)
    GET /api/state     the whole state as JSON (what the page starts from)
    GET /api/stream    server-sent events: ``snapshot`` once, then one ``tick`` per poll

One background task (owned by the application's cleanup context, cancelled on stop) polls
every node each ``interval_s`` and hands each round to the ``ClusterModel``; every connected
browser gets the tick through its own bounded queue. A browser too slow to keep up is
disconnected (its EventSource reconnects and starts again from a snapshot) rather than
buffering without bound. Errors are JSON ``{"error", "detail"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Final

from aiohttp import web

from scripts.client import NodeClient
from scripts.dashboard.model import ClusterModel
from scripts.dashboard.probe import node_client, probe

log = logging.getLogger("medchain.dashboard")

STATIC_DIR: Final = Path(__file__).parent / "static"
STATIC_FILES: Final = {
    "dashboard.js": "text/javascript",
    "dashboard.css": "text/css",
}
DEFAULT_INTERVAL_S: Final = 1.0
MAX_STREAMS: Final = 32
STREAM_QUEUE: Final = 16
"""Ticks a browser may fall behind before it is disconnected."""
KEEPALIVE_S: Final = 15.0


class Hub:
    """The model, the latest state, and the browsers listening."""

    def __init__(self, nodes: Mapping[int, str]) -> None:
        self.model = ClusterModel(nodes)
        self.streams: set[asyncio.Queue[str | None]] = set()
        self.polls = 0

    def publish(self, event: str, data: object) -> None:
        frame = f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
        for q in list(self.streams):
            try:
                q.put_nowait(frame)
            except asyncio.QueueFull:
                self.streams.discard(q)
                with contextlib.suppress(asyncio.QueueFull):
                    q.get_nowait()
                    q.put_nowait(None)  # tells its handler to hang up

    def close_streams(self) -> None:
        for q in list(self.streams):
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(None)


STATE_KEY: Final = web.AppKey("dashboard", Hub)


async def poll_forever(hub: Hub, pool: NodeClient, interval_s: float) -> None:
    clients = {i: node_client(pool, url) for i, url in hub.model.nodes.items()}
    while True:
        started = time.monotonic()
        probes = await asyncio.gather(*(probe(c, i) for i, c in clients.items()))
        tick = hub.model.update(probes, time.time())
        hub.polls += 1
        hub.publish("tick", tick)
        await asyncio.sleep(max(0.05, interval_s - (time.monotonic() - started)))


def _json_error(status: int, error: str, detail: str) -> web.Response:
    return web.json_response({"error": error, "detail": detail}, status=status)


@web.middleware
async def json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _json_error(exc.status, exc.reason, f"{request.method} {request.path}")


async def index(_request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


async def static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name not in STATIC_FILES:  # only the files we ship: no path is ever joined
        return _json_error(404, "not found", f"no static file {name!r}")
    return web.FileResponse(
        STATIC_DIR / name,
        headers={"Content-Type": STATIC_FILES[name], "Cache-Control": "no-cache"},
    )


async def state(request: web.Request) -> web.Response:
    hub = request.app[STATE_KEY]
    return web.json_response({"polls": hub.polls, **hub.model.snapshot()})


async def stream(request: web.Request) -> web.StreamResponse:
    hub = request.app[STATE_KEY]
    if len(hub.streams) >= MAX_STREAMS:
        return _json_error(503, "too many streams", f"at most {MAX_STREAMS} browsers at once")
    resp = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await resp.prepare(request)
    queue: asyncio.Queue[str | None] = asyncio.Queue(STREAM_QUEUE)
    hub.streams.add(queue)
    try:
        snapshot = json.dumps(hub.model.snapshot(), separators=(",", ":"))
        await resp.write(f"retry: 2000\nevent: snapshot\ndata: {snapshot}\n\n".encode())
        while True:
            try:
                frame = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
            except TimeoutError:
                frame = ": keepalive\n\n"
            if frame is None:
                break
            await resp.write(frame.encode())
    except (ConnectionResetError, ConnectionError):
        pass  # the browser went away
    finally:
        hub.streams.discard(queue)
    return resp


def make_app(
    nodes: Mapping[int, str], *, interval_s: float = DEFAULT_INTERVAL_S
) -> web.Application:
    """The dashboard for ``nodes`` (id -> base URL)."""
    app = web.Application(middlewares=[json_errors])
    hub = Hub(nodes)
    app[STATE_KEY] = hub

    async def poller(app: web.Application) -> AsyncIterator[None]:
        async with NodeClient(list(nodes.values())) as pool:
            task = asyncio.create_task(poll_forever(hub, pool, interval_s), name="dashboard-poll")
            try:
                yield
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def hang_up(_app: web.Application) -> None:
        hub.close_streams()  # before the server waits for its handlers to finish

    app.cleanup_ctx.append(poller)
    app.on_shutdown.append(hang_up)
    app.router.add_get("/", index)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/api/state", state)
    app.router.add_get("/api/stream", stream)
    return app


def run(nodes: Mapping[int, str], *, host: str, port: int, interval_s: float) -> None:
    """Serve until SIGINT/SIGTERM."""
    app = make_app(nodes, interval_s=interval_s)
    print(f"medchain dashboard: http://{host}:{port}/ ({len(nodes)} nodes)", flush=True)
    web.run_app(app, host=host, port=port, print=None, shutdown_timeout=2.0, access_log=None)
