"""The fast data path: bulk frames over a plain TCP socket, keyed through a Noise-secured libp2p rpc.

How it works. py-libp2p's Noise+Yamux stream moves about 100 MB/s on this class of machine (Python-level
framing and encryption); a raw socket about 860 MB/s. So for bulk data (KV caches) the receiver grants a
one-time session over the libp2p rpc `/swarm/fastpath/1.0.0` (Noise keeps the grant secret): a 32-byte
key, a 16-byte session id and a TCP port. The sender connects to that port at the address it already
reached the peer on, sends the session id, then frames. Each frame is sealed with AES-256-GCM under
a nonce of (direction, frame counter), so a replayed, reordered, cut or altered frame fails its tag:
- encrypted (default): header || AES-GCM(payload, associated data = header) — ciphertext and tag;
- authenticated only: header || payload || tag, where the tag is the GCM tag of the 40 header bytes with
  the payload as associated data (GHASH runs at several GB/s, faster than any hash here).
A blob starts with a sealed 8-byte length announcement (the receiver allocates it once and decrypts
every frame straight into place) and ends with the receiver's sealed 8-byte acknowledgement, so
`send_blob` returns once the data was delivered and checked. Both sides pipeline: frame i+1 is sealed
(or opened) in a worker thread while frame i is on the wire. A session id is good for one connection within
`GRANT_TTL_S`; sockets that present anything else are closed.
"""

from __future__ import annotations

import logging
import secrets
import struct
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial

import trio
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from swarm.errors import WireError
from swarm.net.errors import DeadlineError, StreamError
from swarm.net.frames import read_exactly
from swarm.net.host import Host, reset_quietly
from swarm.net.rpc import read_message, serve_rpc, write_message
from swarm.wire.frames import (
    HEADER_BYTES,
    MAX_FRAME_PAYLOAD_BYTES,
    FrameHeader,
    decode_frame_header,
    encode_frame_header,
    frame_header,
)
from swarm.wire.messages import FastPathGrant, FastPathRequest

logger = logging.getLogger(__name__)

FASTPATH_PROTOCOL = "/swarm/fastpath/1.0.0"
TAG_BYTES = 16
SESSION_ID_BYTES = 16
GRANT_TTL_S = 10.0
ACK = struct.Struct(">Q")
MAX_BLOB_BYTES = 8 << 30
INLINE_CRYPTO_BYTES = 64 << 10  # frames up to this size are sealed and opened on the trio thread
TO_RECEIVER, TO_SENDER = 0, 1
BlobHandler = Callable[[str, FrameHeader, bytes], Awaitable[None]]
ChannelHandler = Callable[[str, "SealedChannel"], Awaitable[None]]


class Sealer:
    """Seals and opens the frames of one direction of one session (counter-based nonces)."""

    def __init__(self, key: bytes, direction: int, *, is_encrypted: bool) -> None:
        self.aead = AESGCM(key)
        self.direction = direction
        self.is_encrypted = is_encrypted
        self.counter = 0

    def nonce(self) -> bytes:
        self.counter += 1
        return struct.pack(">IQ", self.direction, self.counter)

    def seal_into(self, header: bytes, payload: memoryview, out: memoryview) -> memoryview:
        """Encrypted mode: ciphertext and tag of `payload` written into `out`; returns that part of it."""
        n = self.aead.encrypt_into(self.nonce(), payload, header, out[:len(payload) + TAG_BYTES])
        return out[:n]

    def tag(self, header: bytes, payload: memoryview) -> bytes:
        """Authenticated mode: the GCM tag over the header, with the payload as associated data."""
        return self.aead.encrypt(self.nonce(), header, payload)[-TAG_BYTES:]

    def open_into(self, header: bytes, body: memoryview, out: memoryview) -> None:
        """Encrypted mode: decrypt `body` (payload + tag) into `out`; WireError if the tag is wrong."""
        try:
            self.aead.decrypt_into(self.nonce(), body, header, out)
        except InvalidTag:
            raise WireError(f"fast-path frame {self.counter}: authentication failed") from None

    def check_tag(self, header: bytes, payload: memoryview, tag: bytes) -> None:
        if not secrets.compare_digest(self.tag(header, payload), tag):
            raise WireError(f"fast-path frame {self.counter}: authentication failed")


async def receive_into(sock: trio.SocketStream, out: memoryview) -> None:
    """Fill `out` from the socket, reading straight into it (no joins, no copies)."""
    got = 0
    while got < len(out):
        n = await sock.socket.recv_into(out[got:])
        if n == 0:
            raise StreamError(f"fast path: connection closed after {got} of {len(out)} bytes")
        got += n


class SealedChannel:
    """Sealed blobs and acknowledgements over one TCP socket.

    A blob is an announcement frame (sequence 0, payload: the 8-byte total length) then data frames
    1..n, the last one flagged; the receiver allocates the blob once and decrypts (or reads) each frame
    straight into its place, and acknowledges the blob with a sealed 8-byte frame.
    """

    def __init__(self, sock: trio.SocketStream, key: bytes, *, is_sender: bool, is_encrypted: bool,
                 timeout_s: float, max_blob_bytes: int = MAX_BLOB_BYTES) -> None:
        self.sock = sock
        self.timeout_s = timeout_s
        self.is_encrypted = is_encrypted
        self.max_blob_bytes = max_blob_bytes
        out_dir, in_dir = (TO_RECEIVER, TO_SENDER) if is_sender else (TO_SENDER, TO_RECEIVER)
        self.out = Sealer(key, out_dir, is_encrypted=is_encrypted)
        self.inp = Sealer(key, in_dir, is_encrypted=is_encrypted)
        # two frame buffers, reused: one is sealed/opened while the other is on the wire; each holds a whole
        # sealed frame (header, ciphertext, tag), so an encrypted frame leaves in one send
        self.buffers = [memoryview(bytearray(HEADER_BYTES + MAX_FRAME_PAYLOAD_BYTES + TAG_BYTES)) for _ in range(2)]
        self.buffer = self.buffers[0]  # for the small announcement and acknowledgement frames

    async def seal(self, header: FrameHeader, payload: memoryview, buffer: memoryview) -> list:
        """The wire pieces of one frame: header+ciphertext+tag (in `buffer`), or header, payload and tag."""
        head = encode_frame_header(header)
        if not self.is_encrypted:
            return [head, payload, self.out.tag(head, payload)]
        buffer[:HEADER_BYTES] = head
        body = buffer[HEADER_BYTES:]
        if len(payload) <= INLINE_CRYPTO_BYTES:  # a thread hop costs more than sealing a few bytes
            return [buffer[:HEADER_BYTES + len(self.out.seal_into(head, payload, body))]]
        # AES runs in a worker thread: it releases the GIL
        return [buffer[:HEADER_BYTES + len(await trio.to_thread.run_sync(self.out.seal_into, head, payload, body))]]

    async def send_frame(self, header: FrameHeader, payload: memoryview) -> None:
        for piece in await self.seal(header, payload, self.buffer):
            await self.sock.send_all(piece)

    async def read_frame(self, expect: tuple[int, int] | None, out: memoryview | None,
                         buffer: memoryview) -> tuple[FrameHeader, tuple]:
        """The next frame's header, checked, and what `open_frame` needs to verify (and decrypt) its
        payload into the start of `out` (a new buffer if None); encrypted bodies are read into `buffer`."""
        head = await read_exactly(self.sock.receive_some, HEADER_BYTES)
        header = decode_frame_header(head)
        if not header.is_sealed:
            raise WireError("the fast path accepts sealed frames only")
        if expect is not None and (header.request_id, header.sequence) != expect:
            raise WireError(f"fast path: frame {header.sequence} of request {header.request_id} is out of "
                            f"place (expected frame {expect[1]} of request {expect[0]})")
        out = memoryview(bytearray(header.payload_bytes)) if out is None else out[:header.payload_bytes]
        if len(out) != header.payload_bytes:
            raise WireError(f"fast path: frame of {header.payload_bytes} bytes overruns the announced blob")
        if self.is_encrypted:
            body = buffer[:header.payload_bytes + TAG_BYTES]
            await receive_into(self.sock, body)
            return header, (head, body, out)
        await receive_into(self.sock, out)
        return header, (head, out, await read_exactly(self.sock.receive_some, TAG_BYTES))

    async def open_frame(self, sealed: tuple) -> memoryview:
        """Verify (and decrypt) a frame read by `read_frame`; WireError if its tag is wrong."""
        if self.is_encrypted:
            head, body, out = sealed
            if len(out) <= INLINE_CRYPTO_BYTES:
                self.inp.open_into(head, body, out)
            else:
                await trio.to_thread.run_sync(self.inp.open_into, head, body, out)
            return out
        head, out, tag = sealed
        self.inp.check_tag(head, out, tag)
        return out

    async def receive_frame_into(self, expect: tuple[int, int] | None,
                                 out: memoryview | None) -> tuple[FrameHeader, memoryview]:
        """The next frame, verified, its payload in the start of `out` (a new buffer if None)."""
        header, sealed = await self.read_frame(expect, out, self.buffer)
        return header, await self.open_frame(sealed)

    async def send_blob(self, request_id: int, epoch: int, kind: str | int, data: bytes | memoryview) -> None:
        """Send `data` and wait for the receiver's acknowledgement."""
        view = memoryview(data).cast("B")
        num_frames = -(-len(view) // MAX_FRAME_PAYLOAD_BYTES)
        with trio.move_on_after(self.timeout_s * (1 + num_frames)) as scope:
            announce = memoryview(ACK.pack(len(view)))
            await self.send_frame(frame_header(request_id, epoch, kind, 0, announce, is_last=num_frames == 0,
                                               is_sealed=True), announce)
            await self._send_data_frames(request_id, epoch, kind, view, num_frames)
            _, ack = await self.receive_frame_into((request_id, 0), None)
        if scope.cancelled_caught:
            raise DeadlineError(f"fast path: blob of {len(view)} bytes not acknowledged in time")
        if bytes(ack) != ACK.pack(len(view)):
            raise WireError("fast path: the acknowledgement does not match the blob sent")

    async def _send_data_frames(self, request_id: int, epoch: int, kind: str | int, view: memoryview,
                                num_frames: int) -> None:
        """Frames 1..n, pipelined: frame i+1 is sealed (in a worker thread) while frame i is sent."""

        async def seal(i: int) -> list:
            chunk = view[i * MAX_FRAME_PAYLOAD_BYTES:(i + 1) * MAX_FRAME_PAYLOAD_BYTES]
            header = frame_header(request_id, epoch, kind, i + 1, chunk, is_last=i == num_frames - 1,
                                  is_sealed=True)
            return await self.seal(header, chunk, self.buffers[i % 2])

        async def send(pieces: list) -> None:
            for piece in pieces:
                await self.sock.send_all(piece)

        pieces = await seal(0) if num_frames else []
        for i in range(num_frames):
            seal_next = partial(seal, i + 1) if i + 1 < num_frames else None
            _, pieces = await _concurrently(partial(send, pieces), seal_next)

    async def _receive_data_frames(self, first: FrameHeader, view: memoryview) -> int:
        """Frames 1..n into `view`, pipelined: frame i is verified/decrypted while frame i+1 arrives.
        Returns the number of bytes received."""
        offset, header, pending, i = 0, first, None, 0
        while not header.is_last:
            read = partial(self.read_frame, (first.request_id, header.sequence + 1), view[offset:],
                           self.buffers[i % 2])
            (header, next_pending), _ = await _concurrently(
                read, partial(self.open_frame, pending) if pending is not None else None)
            pending, offset, i = next_pending, offset + header.payload_bytes, i + 1
        if pending is not None:
            await self.open_frame(pending)
        return offset

    async def receive_blob(self, max_bytes: int | None = None) -> tuple[FrameHeader, bytearray]:
        """The next blob, checked frame by frame, acknowledged to the sender; WireError (before anything
        is allocated) if it announces more than `max_bytes` (or the channel's cap)."""
        first, announce = await self.receive_frame_into(None, None)
        if first.payload_bytes != ACK.size or first.sequence != 0:
            raise WireError("fast path: a blob must start with its 8-byte length announcement")
        (total,) = ACK.unpack(announce)
        cap = self.max_blob_bytes if max_bytes is None else min(max_bytes, self.max_blob_bytes)
        if total > cap:
            raise WireError(f"fast path: announced blob of {total} bytes exceeds {cap}")
        blob = bytearray(total)
        offset = await self._receive_data_frames(first, memoryview(blob)) if not first.is_last else 0
        if offset != total:
            raise WireError(f"fast path: blob ended after {offset} of {total} announced bytes")
        ack = memoryview(ACK.pack(total))
        await self.send_frame(frame_header(first.request_id, first.epoch, first.kind, 0, ack, is_last=True,
                                           is_sealed=True), ack)
        return first, blob

    async def aclose(self) -> None:
        await self.sock.aclose()


async def _concurrently(main, side) -> tuple:
    """Run `main()` and, at the same time, `side()` (if given); returns both results. Errors are caught
    in each task and the first one re-raised after both ended, as itself (not as an exception group), so
    callers handle a WireError or StreamError the same way as without the pipeline."""
    results: dict[str, object] = {}

    async def run(name: str, fn) -> None:
        try:
            results[name] = await fn()
        except Exception as e:  # re-raised below, outside the nursery
            results[name] = _Failed(e)

    async with trio.open_nursery() as nursery:
        if side is not None:
            nursery.start_soon(run, "side", side)
        await run("main", main)
    for name in ("main", "side"):
        if isinstance(results.get(name), _Failed):
            raise results[name].error
    return results["main"], results.get("side")


class _Failed:
    def __init__(self, error: Exception) -> None:
        self.error = error


class FastPathServer:
    """Grants sessions over libp2p and serves the TCP side; blobs go to `on_blob(peer_id, header, data)`,
    or, with `on_channel`, each granted connection is handed whole to `on_channel(peer_id, channel)`
    (a request/response protocol of its own; the channel is closed when it returns)."""

    def __init__(self, host: Host, on_blob: BlobHandler | None, port: int, timeout_s: float,
                 on_channel: ChannelHandler | None = None) -> None:
        self.host = host
        self.on_blob = on_blob
        self.on_channel = on_channel
        self.port = port
        self.timeout_s = timeout_s
        self.grants: dict[bytes, tuple[str, bytes, bool, float]] = {}  # session id -> peer, key, mode, expiry

    async def grant(self, peer_id: str, request: FastPathRequest) -> FastPathGrant:
        now = trio.current_time()
        self.grants = {sid: g for sid, g in self.grants.items() if g[3] > now}
        session_id, key = secrets.token_bytes(SESSION_ID_BYTES), secrets.token_bytes(32)
        self.grants[session_id] = (peer_id, key, request.is_encrypted, now + GRANT_TTL_S)
        return FastPathGrant(self.port, key, session_id, request.is_encrypted)

    async def handle(self, sock: trio.SocketStream) -> None:
        peer = "?"
        try:
            with trio.fail_after(self.timeout_s):
                session_id = await read_exactly(sock.receive_some, SESSION_ID_BYTES)
            grant = self.grants.pop(session_id, None)
            if grant is None or grant[3] < trio.current_time():
                raise WireError("unknown or expired session id")
            peer, key, is_encrypted, _ = grant
            channel = SealedChannel(sock, key, is_sender=False, is_encrypted=is_encrypted, timeout_s=self.timeout_s)
            if self.on_channel is not None:
                await self.on_channel(peer, channel)
                return
            while True:
                with trio.fail_after(self.timeout_s):
                    header, blob = await channel.receive_blob()
                await self.on_blob(peer, header, blob)
        except StreamError:
            pass  # the sender closed the session
        except (WireError, trio.TooSlowError, trio.BrokenResourceError, OSError) as e:  # Broken...: a reset
            logger.warning("fast path from peer %s: %s; connection closed", peer, e)
        finally:
            await sock.aclose()


async def run_fastpath_server(host: Host, on_blob: BlobHandler | None = None, *, on_channel: ChannelHandler | None = None,
                              bind_host: str = "0.0.0.0", timeout_s: float = 10.0,
                              task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve the fast path until cancelled; `task_status.started(server)`."""
    if (on_blob is None) == (on_channel is None):
        raise ValueError("run_fastpath_server needs exactly one of on_blob and on_channel")
    listeners = await trio.open_tcp_listeners(0, host=bind_host)
    server = FastPathServer(host, on_blob, listeners[0].socket.getsockname()[1], timeout_s, on_channel)
    serve_rpc(host, FASTPATH_PROTOCOL, server.grant, request_types=(FastPathRequest,))
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, server.handle, listeners)
        task_status.started(server)


@asynccontextmanager
async def open_fastpath(host: Host, peer_id: str, *, is_encrypted: bool = True, timeout_s: float = 10.0):
    """A `SealedChannel` to `peer_id` (which runs `run_fastpath_server`); use its `send_blob`."""
    channel = await connect_fastpath(host, peer_id, is_encrypted=is_encrypted, timeout_s=timeout_s)
    async with channel.sock:
        yield channel


async def connect_fastpath(host: Host, peer_id: str, *, is_encrypted: bool = True,
                           timeout_s: float = 10.0) -> SealedChannel:
    """Negotiate a session with `peer_id` and connect; the caller owns (and closes) the channel."""
    with trio.fail_after(timeout_s):
        stream = await host.open_stream(peer_id, FASTPATH_PROTOCOL)
        try:
            await write_message(stream, FastPathRequest(is_encrypted))
            grant = await read_message(stream, expect=FastPathGrant)
            address = stream.get_remote_address()
        except BaseException:
            await reset_quietly(stream)
            raise
        await stream.close()
        if address is None:
            raise StreamError(f"peer {peer_id}: no IP address known for the fast path")
        sock = await trio.open_tcp_stream(address[0], grant.port)
        try:
            await sock.send_all(grant.session_id)
        except BaseException:
            await sock.aclose()
            raise
    return SealedChannel(sock, grant.session_key, is_sender=True, is_encrypted=grant.is_encrypted,
                         timeout_s=timeout_s)
