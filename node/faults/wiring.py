"""How a node composes the fault layer around its transport, its API and its consensus task.

Only a layer enabled by ``[faults] enabled = true`` is composed in: the node then gets a
:class:`~node.faults.peer.FaultyTransport`, a middleware that alters served blocks, and a pause
gate that holds its consensus task. A disabled layer leaves a plain transport, no middleware
and an always-open gate; the admin routes are registered either way, and then answer 404 with
a JSON body saying how to enable fault injection.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from aiohttp import web

from node.config import NodeLimits
from node.faults.admin import admin_routes
from node.faults.byzantine import Sign
from node.faults.layer import FaultLayer
from node.faults.peer import FaultyTransport
from node.faults.served import served_blocks_middleware
from node.peerauth import PeerAuth
from node.transport import Deliver, Transport

Gate = Callable[[], Awaitable[None]]
"""Awaited by the consensus task before each round: returns once the task may step again."""


def make_transport(
    layer: FaultLayer,
    sign: Sign,
    *,
    self_id: int,
    peers: Mapping[int, str],
    limits: NodeLimits,
    deliver: Deliver,
    auth: PeerAuth,
    ssl_context: ssl.SSLContext | None = None,
) -> Transport:
    """The node's transport: under the fault layer if it is enabled, else a plain one."""
    if not layer.enabled:
        return Transport(
            self_id=self_id,
            peers=peers,
            limits=limits,
            deliver=deliver,
            auth=auth,
            ssl_context=ssl_context,
        )
    return FaultyTransport(
        layer,
        sign,
        self_id=self_id,
        peers=peers,
        limits=limits,
        deliver=deliver,
        auth=auth,
        ssl_context=ssl_context,
    )


async def _open() -> None:
    return None


def pause_gate(layer: FaultLayer) -> Gate:
    """While a pause fault is active the gate stays shut: the consensus task stops feeding the
    replica, and its inboxes stay bounded (overflow is dropped and counted, as under
    overload)."""
    return layer.wait_unpaused if layer.enabled else _open


def install_api_faults(
    app: web.Application,
    layer: FaultLayer,
    operator_public_key: bytes | None,
    nonce_file: Path | None = None,
) -> None:
    """Add the admin routes to the node's app and, when enabled, the served-block middleware
    (inside the app's own middlewares, so its errors still get the uniform JSON body)."""
    if layer.enabled:
        app.middlewares.append(served_blocks_middleware(layer))
    app.add_routes(admin_routes(layer, operator_public_key, nonce_file=nonce_file))


__all__ = ["Gate", "install_api_faults", "make_transport", "pause_gate"]
