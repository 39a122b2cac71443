"""Framed bulk streams: blobs cut into checksummed frames of at most 4 MiB over any byte stream.

py-libp2p fails on length-prefixed messages over about 6.5 MiB, so bulk data (KV caches, hidden states)
never goes through its helpers: a `FrameChannel` writes `swarm.wire.frames` headers and raw payloads
itself and reads them back with a deadline per frame. The same channel runs over a libp2p stream or a
plain trio socket (the fast path in `fastpath.py`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from swarm.errors import WireError
from swarm.net.errors import DeadlineError, StreamError
from swarm.wire.frames import (
    HEADER_BYTES,
    MAX_FRAME_PAYLOAD_BYTES,
    FrameHeader,
    check_payload,
    decode_frame_header,
    encode_frame_header,
    frame_header,
)

ReadSome = Callable[[int], Awaitable[bytes]]
WriteAll = Callable[[bytes], Awaitable[None]]
COALESCE_BYTES = 64 << 10
MAX_BLOB_BYTES = 1 << 34  # 16 GiB: a bound on what one blob may claim to hold


class FrameChannel:
    """Send and receive frames over a byte stream given as `read_some(n)` and `write_all(data)`."""

    def __init__(self, read_some: ReadSome, write_all: WriteAll, *, timeout_s: float = 10.0) -> None:
        self.read_some = read_some
        self.write_all = write_all
        self.timeout_s = timeout_s

    async def send(self, request_id: int, epoch: int, kind: str | int, sequence: int, payload: bytes,
                   *, is_last: bool = False) -> None:
        """Write one frame (header then payload) within the deadline."""
        if len(payload) > MAX_FRAME_PAYLOAD_BYTES:
            raise ValueError(f"a frame holds at most {MAX_FRAME_PAYLOAD_BYTES} bytes, got {len(payload)}")
        header = frame_header(request_id, epoch, kind, sequence, payload, is_last=is_last)
        with trio.move_on_after(self.timeout_s) as scope:
            if len(payload) < COALESCE_BYTES:  # one write for small frames, no copy for big ones
                await self.write_all(encode_frame_header(header) + payload)
            else:
                await self.write_all(encode_frame_header(header))
                await self.write_all(payload)
        if scope.cancelled_caught:
            raise DeadlineError(f"sending a frame of {len(payload)} bytes took more than {self.timeout_s:g} s")

    async def receive(self) -> tuple[FrameHeader, bytes]:
        """The next frame, validated (header fields, sizes, checksum); WireError on bad bytes."""
        with trio.move_on_after(self.timeout_s) as scope:
            header = decode_frame_header(await self.read_exactly(HEADER_BYTES))
            payload = await self.read_exactly(header.payload_bytes)
        if scope.cancelled_caught:
            raise DeadlineError(f"no complete frame within {self.timeout_s:g} s")
        check_payload(header, payload)
        return header, payload

    async def send_blob(self, request_id: int, epoch: int, kind: str | int, data: bytes | memoryview) -> int:
        """Write `data` as consecutive frames (the last one flagged); returns the number of frames."""
        view = memoryview(data)
        num_frames = max(1, -(-len(view) // MAX_FRAME_PAYLOAD_BYTES))
        for i in range(num_frames):
            chunk = view[i * MAX_FRAME_PAYLOAD_BYTES:(i + 1) * MAX_FRAME_PAYLOAD_BYTES]
            await self.send(request_id, epoch, kind, i, bytes(chunk), is_last=i == num_frames - 1)
        return num_frames

    async def receive_blob(self, *, max_bytes: int = MAX_BLOB_BYTES) -> tuple[FrameHeader, bytes]:
        """Frames up to the one flagged last, joined; checks they share request, epoch, kind and order."""
        first, payload = await self.receive()
        parts, total, header = [payload], len(payload), first
        while not header.is_last:
            header, payload = await self.receive()
            same = (header.request_id, header.epoch, header.kind) == (first.request_id, first.epoch, first.kind)
            if not same or header.sequence != len(parts):
                raise WireError(f"frame {header.sequence} of request {header.request_id} is out of place in "
                                f"the blob of request {first.request_id} (expected frame {len(parts)})")
            total += len(payload)
            if total > max_bytes:
                raise WireError(f"blob of request {first.request_id} exceeds {max_bytes} bytes")
            parts.append(payload)
        return first, b"".join(parts)

    async def read_exactly(self, num_bytes: int) -> bytes:
        return await read_exactly(self.read_some, num_bytes)


async def read_exactly(read_some: ReadSome, num_bytes: int) -> bytes:
    """Exactly `num_bytes` bytes (the caller holds the deadline); StreamError if the stream ends first."""
    buf = bytearray()
    while len(buf) < num_bytes:
        chunk = await read_some(num_bytes - len(buf))
        if not chunk:
            raise StreamError(f"stream ended after {len(buf)} of {num_bytes} bytes")
        buf += chunk
    return bytes(buf)


def stream_reader(stream) -> ReadSome:
    """`stream.read` of a libp2p stream, with libp2p's end-of-stream and reset errors as StreamError."""

    async def read_some(num_bytes: int) -> bytes:
        try:
            return await stream.read(num_bytes)
        except Exception as e:  # libp2p raises StreamEOF, StreamReset, MuxedConnUnavailable, ...
            raise StreamError(f"stream ended: {type(e).__name__} {e}".strip()) from None

    return read_some


def stream_writer(stream) -> Callable[[bytes], Awaitable[None]]:
    """`stream.write` of a libp2p stream, with libp2p's closed-stream and reset errors as StreamError."""

    async def write(data: bytes) -> None:
        try:
            await stream.write(data)
        except Exception as e:  # libp2p raises StreamClosed, StreamReset, MuxedConnUnavailable, ...
            raise StreamError(f"stream broke while writing: {type(e).__name__} {e}".strip()) from None

    return write


def libp2p_frames(stream, *, timeout_s: float = 10.0) -> FrameChannel:
    """A frame channel over a libp2p stream (Noise + Yamux); libp2p's stream errors become StreamError."""
    return FrameChannel(stream_reader(stream), stream_writer(stream), timeout_s=timeout_s)


def socket_frames(sock: trio.abc.Stream, *, timeout_s: float = 10.0) -> FrameChannel:
    """A frame channel over a trio stream (a plain TCP socket of the fast path)."""
    return FrameChannel(sock.receive_some, sock.send_all, timeout_s=timeout_s)
