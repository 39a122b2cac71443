"""`SwarmClient`: the synchronous SDK. Each call runs trio in a private thread, so it works from any
program (also one that runs its own asyncio or trio loop) and never blocks longer than its deadline.

    from swarm.client import SwarmClient
    client = SwarmClient("/ip4/127.0.0.1/tcp/4001/p2p/12D3Koo...")
    print(client.generate("What is the capital of France?", max_tokens=16).text)
    for chunk in client.stream("Tell me a story"):
        print(chunk.text, end="", flush=True)
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence

import trio

from swarm.client.errors import ClientError
from swarm.client.session import AsyncSwarmClient, Completion
from swarm.wire.requests import StatusReply, TokenChunk

_DONE = object()


class SwarmClient:
    """Synchronous access to a swarm through any of `addrs` (failing over to the next if one is down)."""

    def __init__(self, addrs: str | Sequence[str], *, swarm_key: str | None = None, timeout_s: float = 300.0,
                 connect_timeout_s: float = 5.0) -> None:
        self.options = dict(swarm_key=swarm_key, timeout_s=timeout_s, connect_timeout_s=connect_timeout_s)
        self.addrs = addrs
        self.timeout_s = timeout_s
        AsyncSwarmClient(addrs, **self.options)  # validates the addresses now, not on first use

    def generate(self, prompt: str | Sequence[int] | None = None, *, messages: Sequence[dict] | None = None,
                 **sampling) -> Completion:
        """The whole generation (text, token ids, finish reason, TTFT and TPOT)."""
        return self._run(lambda client: client.generate(prompt, messages=messages, **sampling))

    def status(self) -> StatusReply:
        """The answering peer's view of the swarm (members, plan, epoch, load)."""
        return self._run(lambda client: client.status())

    def stream(self, prompt: str | Sequence[int] | None = None, *, messages: Sequence[dict] | None = None,
               **sampling) -> Iterator[TokenChunk]:
        """Token chunks as they arrive; stopping the iteration early cancels the request."""
        chunks: queue.Queue = queue.Queue()
        stop = threading.Event()

        async def produce() -> None:
            async with AsyncSwarmClient(self.addrs, **self.options) as client:
                async for chunk in client.stream(prompt, messages=messages, **sampling):
                    chunks.put(chunk)
                    if stop.is_set():
                        return

        thread = threading.Thread(target=_run_into, args=(produce, chunks), daemon=True)
        thread.start()
        try:
            while True:
                try:
                    item = chunks.get(timeout=self.timeout_s)
                except queue.Empty:
                    raise ClientError(f"no tokens for {self.timeout_s:g} s") from None
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()

    def _run(self, call):
        async def main():
            async with AsyncSwarmClient(self.addrs, **self.options) as client:
                return await call(client)

        results: queue.Queue = queue.Queue()
        thread = threading.Thread(target=_run_into, args=(main, results), daemon=True)
        thread.start()
        try:
            item = results.get(timeout=self.timeout_s + 30.0)
        except queue.Empty:
            raise ClientError(f"no answer within {self.timeout_s + 30:g} s") from None
        if isinstance(item, BaseException):
            raise item
        results.get(timeout=5.0)  # the end marker
        return item


def _run_into(main, out: queue.Queue) -> None:
    """Run `main` under trio in this thread; put its result (if any), or its error, then the end marker."""
    try:
        result = trio.run(main)
        if result is not None:
            out.put(result)
    except BaseException as e:  # handed to the caller's thread, which raises it
        out.put(_unwrap(e))
    out.put(_DONE)


def _unwrap(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error
