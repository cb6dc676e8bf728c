"""Fuzz targets: the peer frame decoder and every HTTP route of a real in-process node.

Each target takes one input (bytes) and raises AssertionError on a finding: an exception other
than the decoder's own error, or an HTTP answer of 500 or more. ``tests.fuzz.run`` drives them
with atheris (coverage-guided libFuzzer) or, where atheris is not installed, with random and
mutated inputs from the seed corpus (``tests/fuzz/corpus/<target>/``).

The HTTP input format is readable so that seeds can be written by hand::

    METHOD PATH-AND-QUERY\\n
    Header: value\\n        (zero or more)
    \\n
    body bytes

and the request goes to the node's server as raw bytes over TCP (the node's HTTP parser is
fuzzed too); Content-Length is set to the body's length.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import tempfile
from pathlib import Path

from node.codec import CodecError, decode_message
from node.transport import Transport

METHODS = (b"GET", b"POST", b"PUT", b"DELETE", b"HEAD")


# ---------------------------------------------------------------------------------------------
# peer frames


def peer_frames(data: bytes) -> None:
    """A POST /peer/msgs body: split into frames, each decoded; only CodecError may escape."""
    frames = Transport._split_frames(data)
    if isinstance(frames, str):
        frames = [data]  # not an array of frames: fuzz the frame decoder with the whole input
    for frame in frames:
        with contextlib.suppress(CodecError):
            decode_message(frame)


# ---------------------------------------------------------------------------------------------
# HTTP routes


def build_request(data: bytes) -> bytes:
    """Raw HTTP/1.1 request bytes from a fuzz input (see the module docstring)."""
    head, _, body = data.partition(b"\n\n")
    lines = head.split(b"\n")
    first = lines[0].split(b" ", 1)
    method = first[0].upper() if first[0].upper() in METHODS else b"GET"
    path = first[1] if len(first) > 1 else b"/"
    path = path.replace(b"\r", b"").replace(b" ", b"%20")
    if not path.startswith(b"/"):
        path = b"/" + path
    headers = b"".join(
        line.replace(b"\r", b"") + b"\r\n"
        for line in lines[1:20]
        if b":" in line and not line.lower().startswith((b"content-length", b"transfer-encoding"))
    )
    return (
        method
        + b" "
        + path
        + b" HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n"
        + headers
        + b"Content-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


class HttpTarget:
    """A started node (its peers unreachable, faults enabled so the admin routes run) and its
    real server on 127.0.0.1, in one event loop driven synchronously per input."""

    def __init__(self) -> None:
        from aiohttp.test_utils import TestServer

        from node.config import NodeLimits
        from node.faults.model import FaultsConfig
        from node.runtime import Node
        from tests.unit.test_api import make_configs

        logging.disable(logging.CRITICAL)
        self._tmp = tempfile.TemporaryDirectory()
        config = make_configs(Path(self._tmp.name), limits=NodeLimits(body_timeout_ms=2000))[0]
        # Faults on and an operator key, so the admin routes parse and check what they get.
        config = dataclasses.replace(
            config, faults=FaultsConfig(enabled=True), operator_public_key=b"\x05" * 32
        )
        self.loop = asyncio.new_event_loop()
        self.node = Node(config)
        self.server = TestServer(self.node.app)
        self.loop.run_until_complete(self._start())

    async def _start(self) -> None:
        await self.node.start()
        await self.server.start_server()

    async def _send(self, raw: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.server.port)
        try:
            writer.write(raw)
            await writer.drain()
            return await asyncio.wait_for(reader.read(1 << 20), 10.0)
        finally:
            writer.close()

    def __call__(self, data: bytes) -> None:
        answer = self.loop.run_until_complete(self._send(build_request(data)))
        if not answer:
            return  # closed without an answer: a refused request (e.g. header limits)
        status_line = answer.split(b"\r\n", 1)[0]
        parts = status_line.split(b" ")
        assert len(parts) >= 2 and parts[1].isdigit(), f"not an HTTP answer: {status_line!r}"
        status = int(parts[1])
        # 503 with Retry-After and the JSON "overloaded" body is admission control doing its
        # job (this lone node never commits, so its backlog ages): an answer, not a failure.
        overloaded = status == 503 and b"Retry-After:" in answer and b'"overloaded"' in answer
        assert status < 500 or overloaded, f"HTTP {status} for {data[:200]!r}: {answer[:300]!r}"
        assert self.node.healthy, "the node stopped"

    def close(self) -> None:
        async def _stop() -> None:
            await self.server.close()
            await self.node.stop()

        self.loop.run_until_complete(_stop())
        self.loop.close()
        self._tmp.cleanup()


TARGETS = ("peer_frames", "http_routes")
