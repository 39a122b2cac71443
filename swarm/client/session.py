"""`AsyncSwarmClient`: submit requests to any listed peer over libp2p (trio), failing over between peers.

    async with AsyncSwarmClient(["/ip4/127.0.0.1/tcp/4001/p2p/12D3Koo..."]) as client:
        async for chunk in client.stream("Hello", max_tokens=32):
            print(chunk.text, end="")

The client is a libp2p host with a throw-away identity (and the swarm key, for a private swarm). A peer
that cannot be dialled or does not accept the request is skipped for the next one in the list; once
tokens flow the request is bound to that peer. Every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import math
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import trio

from swarm.client.errors import ClientError, GenerationError, UnreachableError
from swarm.errors import SwarmError
from swarm.net.errors import StreamError
from swarm.net.host import Host, HostConfig, open_host
from swarm.net.rpc import read_message, write_message
from swarm.wire.requests import (
    ChatMessage,
    GenerateRequest,
    RequestFailure,
    StatusReply,
    StatusRequest,
    TokenChunk,
)

GENERATE_PROTOCOL = "/swarm/generate/1.0.0"
STATUS_PROTOCOL = "/swarm/status/1.0.0"
SAMPLING_KEYS = ("max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "ignore_eos")


@dataclass(frozen=True)
class Completion:
    """A finished generation and how fast it came: time to first token and mean time per later token."""

    request_id: str
    text: str
    token_ids: tuple[int, ...]
    finish_reason: str
    ttft_s: float
    tpot_s: float

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


def make_request(prompt: str | Sequence[int] | None, messages: Sequence[dict] | None, sampling: dict) -> GenerateRequest:
    """A validated GenerateRequest from a prompt (text or token ids) or chat messages and sampling keywords."""
    unknown = sorted(set(sampling) - set(SAMPLING_KEYS))
    if unknown:
        raise ClientError(f"unknown sampling options {unknown}; use {list(SAMPLING_KEYS)}")
    if (prompt is None) == (messages is None):
        raise ClientError("give exactly one of a prompt or messages")
    fields = dict(sampling)
    if "stop" in fields:
        fields["stop"] = (fields["stop"],) if isinstance(fields["stop"], str) else tuple(fields["stop"])
    if messages is not None:
        fields["messages"] = tuple(ChatMessage(str(m["role"]), str(m["content"])) for m in messages)
    elif isinstance(prompt, str):
        fields["prompt"] = prompt
    else:
        fields["token_ids"] = tuple(int(t) for t in prompt)
    try:
        return GenerateRequest(request_id=uuid.uuid4().hex[:16], **fields)
    except SwarmError as e:
        raise ClientError(f"invalid request: {e}") from None


class AsyncSwarmClient:
    """An open client: `stream`, `generate` and `status` against the peers in `addrs`."""

    def __init__(self, addrs: str | Sequence[str], *, swarm_key: str | None = None, timeout_s: float = 300.0,
                 connect_timeout_s: float = 5.0) -> None:
        self.addrs = [addrs] if isinstance(addrs, str) else list(addrs)
        if not self.addrs or any("/p2p/" not in a for a in self.addrs):
            raise ClientError("give at least one full peer address: /ip4/HOST/tcp/PORT/p2p/<peer id>")
        self.swarm_key = swarm_key
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.host: Host | None = None
        self._host_cm = None

    async def __aenter__(self) -> AsyncSwarmClient:
        from libp2p.crypto.ed25519 import create_new_key_pair

        config = HostConfig(listen_addrs=("/ip4/127.0.0.1/tcp/0",), swarm_key_path=self.swarm_key,
                            dial_timeout_s=self.connect_timeout_s, stream_timeout_s=self.connect_timeout_s)
        self._host_cm = open_host(config, key_pair=create_new_key_pair())
        self.host = await self._host_cm.__aenter__()
        return self

    async def __aexit__(self, *exc) -> None:
        await self._host_cm.__aexit__(*exc)

    async def open(self, protocol: str):
        """(stream, peer id) on the first peer in the list that accepts `protocol`."""
        errors = []
        for addr in self.addrs:
            try:
                peer_id = await self.host.dial(addr, timeout_s=self.connect_timeout_s)
                return await self.host.open_stream(peer_id, protocol, timeout_s=self.connect_timeout_s), peer_id
            except SwarmError as e:
                errors.append(f"{addr}: {e}")
            except Exception as e:  # libp2p raises its own types for refused connections
                errors.append(f"{addr}: {type(e).__name__}: {e}")
        raise UnreachableError("no peer reachable: " + "; ".join(errors))

    async def stream(self, prompt: str | Sequence[int] | None = None, *, messages: Sequence[dict] | None = None,
                     **sampling) -> AsyncIterator[TokenChunk]:
        """The request's token chunks as they arrive; the last one has a finish_reason."""
        request = make_request(prompt, messages, sampling)
        stream, peer_id = await self.open(GENERATE_PROTOCOL)
        try:
            await write_message(stream, request)
            while True:
                with trio.fail_after(self.timeout_s):
                    answer = await _read(stream, peer_id)
                if isinstance(answer, RequestFailure):
                    raise GenerationError(answer.code, answer.message)
                if not isinstance(answer, TokenChunk) or answer.request_id != request.request_id:
                    raise ClientError(f"peer {peer_id} sent an unexpected {type(answer).__name__}")
                yield answer
                if answer.finish_reason:
                    return
        except trio.TooSlowError:
            raise ClientError(f"peer {peer_id} sent nothing for {self.timeout_s:g} s") from None
        finally:
            # the peer may have closed or reset it already
            with trio.move_on_after(1.0), contextlib.suppress(Exception):
                await stream.close()

    async def generate(self, prompt: str | Sequence[int] | None = None, *, messages: Sequence[dict] | None = None,
                       **sampling) -> Completion:
        """The whole generation, with its TTFT and TPOT as seen by this client."""
        start = time.perf_counter()
        first_s = last_s = math.nan
        ids: list[int] = []
        texts: list[str] = []
        chunk = None
        async for chunk in self.stream(prompt, messages=messages, **sampling):
            now = time.perf_counter()
            if chunk.token_ids and not ids:
                first_s = now - start
            if chunk.token_ids:
                last_s = now - start
            ids.extend(chunk.token_ids)
            texts.append(chunk.text)
        tpot_s = (last_s - first_s) / (len(ids) - 1) if len(ids) > 1 else 0.0
        return Completion(chunk.request_id, "".join(texts), tuple(ids), chunk.finish_reason, first_s, tpot_s)

    async def status(self) -> StatusReply:
        """The answering peer's view of the swarm."""
        stream, peer_id = await self.open(STATUS_PROTOCOL)
        try:
            with trio.fail_after(self.connect_timeout_s):
                await write_message(stream, StatusRequest())
                answer = await _read(stream, peer_id)
        except trio.TooSlowError:
            raise ClientError(f"peer {peer_id} did not answer a status request within {self.connect_timeout_s:g} s") from None
        if not isinstance(answer, StatusReply):
            raise ClientError(f"peer {peer_id} answered a status request with {type(answer).__name__}")
        return answer


async def _read(stream, peer_id: str):
    try:
        return await read_message(stream)
    except StreamError as e:
        raise ClientError(f"peer {peer_id} closed the stream: {e}") from None
