"""The transport under the fault layer: every peer link's frames go through its decisions.

A node composes a :class:`FaultyTransport` instead of a plain ``Transport`` only when its config
says ``[faults] enabled = true`` (:func:`node.faults.wiring.make_transport`), so the transport
itself knows nothing about faults.
"""

from __future__ import annotations

import asyncio
import random
import ssl
from collections.abc import Mapping

from consensus.messages import Message
from node.config import NodeLimits
from node.faults.byzantine import Sign
from node.faults.layer import FaultLayer
from node.peerauth import PeerAuth
from node.transport import Deliver, Transport

FAULT_DROP_REASON = "fault_injected"
"""The transport's drop-reason counter for received frames the layer refused."""


class FaultyTransport(Transport):
    """A Transport whose sends pass the layer's byzantine mode (before encoding) and its
    drop/delay/duplicate/reorder/partition decisions (per frame and peer), and whose received
    frames pass its drop and partition decisions before they are decoded."""

    def __init__(
        self,
        layer: FaultLayer,
        sign: Sign,
        *,
        self_id: int,
        peers: Mapping[int, str],
        limits: NodeLimits,
        deliver: Deliver,
        auth: PeerAuth,
        ssl_context: ssl.SSLContext | None = None,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(
            self_id=self_id,
            peers=peers,
            limits=limits,
            deliver=deliver,
            auth=auth,
            ssl_context=ssl_context,
            rng=rng,
        )
        self._layer = layer
        self._sign = sign

    def send(self, dest: int | None, msg: Message, frame: bytes | None = None) -> None:
        for d, rewritten in self._layer.outgoing(dest, msg, self._sign):
            # A message the byzantine mode rewrote needs its own encoding; an unchanged one
            # goes out as the frame the caller already has.
            out = frame if frame is not None and rewritten is msg else self.encode(rewritten)
            if out is None:
                continue
            if d is not None and d not in self.peer_ids:
                self.send_frame(d, out)  # counted as an unknown destination
                continue
            for peer in self.peer_ids if d is None else (d,):
                self._send_through_layer(peer, out)

    def _send_through_layer(self, peer: int, frame: bytes) -> None:
        """Drop, duplicate, or queue later (delay, reorder), as the layer decides."""
        for delay_s, out in self._layer.on_send(peer, frame):
            if delay_s > 0:
                asyncio.get_running_loop().call_later(delay_s, self.send_frame, peer, out)
            else:
                self.send_frame(peer, out)

    def _receive_frame(self, sender: int, frame: object) -> None:
        if type(frame) is bytes and not self._layer.on_receive(sender, frame):
            self.dropped_frames.add(FAULT_DROP_REASON)
            return
        super()._receive_frame(sender, frame)


__all__ = ["FaultyTransport"]
