"""An in-process stream pair with the libp2p stream interface, for when a peer routes a request to itself.

libp2p cannot open a stream to its own host, yet an entry peer is often also the prefill or decode
replica. `loopback_pair()` gives two connected ends with `read(n)`, `write(data)`, `close()` and
`reset()`, so every protocol handler runs unchanged on either kind of stream. Writes are bounded
(backpressure, like Yamux); `read` returns b"" at end of stream.
"""

from __future__ import annotations

import trio

MAX_BUFFERED_WRITES = 64


class LoopbackStream:
    """One end of a loopback pair."""

    def __init__(self, send: trio.MemorySendChannel, receive: trio.MemoryReceiveChannel, peer_id: str) -> None:
        self.send = send
        self.receive = receive
        self.peer_id = peer_id
        self.pending = b""

    async def write(self, data: bytes) -> None:
        try:
            await self.send.send(bytes(data))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise trio.BrokenResourceError("the other end of the loopback stream is closed") from None

    async def read(self, num_bytes: int | None = None) -> bytes:
        if not self.pending:
            try:
                self.pending = await self.receive.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                return b""
        num_bytes = len(self.pending) if num_bytes is None else num_bytes
        out, self.pending = self.pending[:num_bytes], self.pending[num_bytes:]
        return out

    async def close(self) -> None:
        await self.send.aclose()

    async def reset(self) -> None:
        await self.send.aclose()
        await self.receive.aclose()


def loopback_pair(peer_id: str) -> tuple[LoopbackStream, LoopbackStream]:
    """Two connected ends; both report `peer_id` (this peer) as the remote side."""
    a_send, b_receive = trio.open_memory_channel(MAX_BUFFERED_WRITES)
    b_send, a_receive = trio.open_memory_channel(MAX_BUFFERED_WRITES)
    return LoopbackStream(a_send, a_receive, peer_id), LoopbackStream(b_send, b_receive, peer_id)
