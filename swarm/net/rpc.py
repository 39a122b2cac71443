"""A small request/response helper for control messages over libp2p streams, with deadlines and size caps.

One stream per call: the caller writes a 4-byte big-endian length and one `swarm.wire` message, the server
answers the same way with the response or an `RpcFailure`. A request that is too big, malformed, of an
unexpected type or late gets its stream reset and a log line; the host keeps serving. Bulk data goes over
`frames.py` instead (py-libp2p fails on messages over about 6.5 MiB).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from swarm.errors import WireError
from swarm.net.errors import DeadlineError, RemoteError, StreamError
from swarm.net.frames import read_exactly, stream_reader, stream_writer
from swarm.net.host import Host, remote_peer_id, reset_quietly
from swarm.wire.codec import decode, encode
from swarm.wire.messages import RpcFailure

logger = logging.getLogger(__name__)

T = TypeVar("T")
LENGTH = struct.Struct(">I")
MAX_RPC_BYTES = 1 << 20  # control messages only; larger data goes in frames
Handler = Callable[[str, Any], Awaitable[Any]]


async def write_message(stream, msg: Any, *, max_bytes: int = MAX_RPC_BYTES) -> None:
    data = encode(msg)
    if len(data) > max_bytes:
        raise WireError(f"{type(msg).__name__} of {len(data)} bytes exceeds the rpc limit of {max_bytes}")
    await stream_writer(stream)(LENGTH.pack(len(data)) + data)


async def read_message(stream, *, max_bytes: int = MAX_RPC_BYTES, expect: type[T] | None = None) -> T:
    """One length-prefixed message; WireError if it is too big or does not decode, StreamError if the stream
    ends or breaks first."""
    read_some = stream_reader(stream)
    (length,) = LENGTH.unpack(await read_exactly(read_some, LENGTH.size))
    if length > max_bytes:
        raise WireError(f"message of {length} bytes announced, the limit is {max_bytes}")
    return decode(await read_exactly(read_some, length), expect=expect, max_bytes=max_bytes)


def serve_rpc(host: Host, protocol: str, handler: Handler, *, request_types: tuple[type, ...] = (),
              timeout_s: float = 5.0, max_request_bytes: int = MAX_RPC_BYTES) -> None:
    """Answer requests on `protocol` with `await handler(peer_id, request)`.

    A handler raises `RemoteError(code, message)` to send a typed failure; any other exception becomes
    an "internal" failure (logged here with its traceback). Bad requests reset the stream.
    """

    async def serve(stream) -> None:
        peer = remote_peer_id(stream)
        with trio.move_on_after(timeout_s) as scope:
            request = await read_message(stream, max_bytes=max_request_bytes)
            if request_types and not isinstance(request, request_types):
                raise WireError(f"unexpected request type {type(request).__name__}")
            response = await _answer(handler, peer, protocol, request)
            await write_message(stream, response)
            await stream.close()
        if scope.cancelled_caught:
            logger.warning("%s from peer %s: no complete request and answer within %g s; stream reset",
                           protocol, peer, timeout_s)
            await reset_quietly(stream)

    host.set_handler(protocol, serve)


async def _answer(handler: Handler, peer: str, protocol: str, request: Any) -> Any:
    try:
        return await handler(peer, request)
    except RemoteError as e:
        return RpcFailure(e.code[:64], e.message[:1024])
    except Exception as e:  # a bug in a handler must not take the host down; the caller learns of it
        logger.exception("%s handler failed on a request from peer %s", protocol, peer)
        return RpcFailure("internal", f"{type(e).__name__}: {e}"[:1024])


async def call(host: Host, peer_id: str, protocol: str, request: Any, *, expect: type[T] | None = None,
               timeout_s: float = 3.0, max_response_bytes: int = MAX_RPC_BYTES) -> T:
    """Send `request` to `peer_id` and return its answer (of type `expect`, if given).

    Raises DeadlineError past `timeout_s` (the stream is reset), RemoteError for an `RpcFailure` answer,
    StreamError/WireError for a broken stream or bad bytes.
    """
    stream = None
    with trio.move_on_after(timeout_s) as scope:
        stream = await host.open_stream(peer_id, protocol, timeout_s=timeout_s)
        try:
            await write_message(stream, request)
            response = await read_message(stream, max_bytes=max_response_bytes)
        except (WireError, StreamError):
            await reset_quietly(stream)
            raise
        await stream.close()
    if scope.cancelled_caught:
        if stream is not None:
            await reset_quietly(stream)
        raise DeadlineError(f"peer {peer_id}: no answer on {protocol} within {timeout_s:g} s")
    if isinstance(response, RpcFailure):
        raise RemoteError(response.code, response.message)
    if expect is not None and not isinstance(response, expect):
        raise WireError(f"peer {peer_id}: expected a {expect.__name__} answer, got {type(response).__name__}")
    return response
