"""Networking figures on 127.0.0.1: KV-transfer throughput between two processes on every data path, and
gossip convergence and election time with 8 peers (8 hosts in one trio run, one process).

How it works. A receiver process (`--serve`) runs a libp2p host with a framed-stream sink, the fast-path
server (`swarm.net.fastpath`) and a raw TCP sink; the sender (this process) pushes blobs of
`--blob-mib` through each path in turn and waits for each blob's acknowledgement, `--repeats` times,
interleaved, and reports the median MB/s and its ratio to the raw socket measured in the same run:
- libp2p: Noise + Yamux stream, 4 MiB frames with crc32 (`swarm.net.frames`);
- fastpath-aead: plain TCP, each 4 MiB frame AES-256-GCM encrypted (key granted over Noise);
- fastpath-auth: plain TCP, each frame authenticated only (GCM tag over header and payload);
- raw: plain TCP, length-prefixed, no integrity at all (the ceiling).

    python -m bench.bench_net [--quick] [--json] [--skip-paths | --skip-swarm] [--swarm-peers N]
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import trio

from swarm.net.errors import StreamError
from swarm.net.fastpath import open_fastpath, receive_into, run_fastpath_server
from swarm.net.frames import libp2p_frames, read_exactly
from swarm.net.host import HostConfig, open_host
from swarm.net.liveness import run_liveness
from swarm.net.pubsub import TOPIC_LOAD, num_outbound_dropped, open_gossip
from swarm.wire.hardware import HardwareProfile
from swarm.wire.messages import LoadReport

BULK_PROTOCOL = "/swarm/bench-bulk/1.0.0"
LENGTH = struct.Struct(">Q")
PATHS = ("libp2p", "fastpath-aead", "fastpath-auth", "raw")


async def raw_sink(sock: trio.SocketStream) -> None:
    async with sock:
        while True:
            try:
                (length,) = LENGTH.unpack(await read_exactly(sock.receive_some, LENGTH.size))
            except Exception:  # the sender closed: done
                return
            blob = bytearray(length)  # into one buffer, as a KV receiver needs it
            await receive_into(sock, memoryview(blob))
            await sock.send_all(LENGTH.pack(len(blob)))


async def serve(identity_dir: str) -> None:
    """The receiving process: prints one JSON line with its addresses, runs until stdin closes."""
    config = HostConfig(identity_path=Path(identity_dir) / "receiver.key")
    async with open_host(config) as host:

        async def bulk(stream) -> None:
            channel = libp2p_frames(stream, timeout_s=30)
            while True:
                try:
                    _, blob = await channel.receive_blob()
                except StreamError:
                    return  # the sender closed the stream: done
                await stream.write(LENGTH.pack(len(blob)))

        async def on_blob(peer_id, header, blob) -> None:
            pass

        host.set_handler(BULK_PROTOCOL, bulk)
        await host.nursery.start(run_fastpath_server, host, on_blob)
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        await host.nursery.start(trio.serve_listeners, raw_sink, listeners)
        print(json.dumps({"addr": host.addrs[0], "raw_port": listeners[0].socket.getsockname()[1]}), flush=True)
        await trio.to_thread.run_sync(sys.stdin.read)


async def send_libp2p(host, peer_id: str, blob: bytes, count: int) -> None:
    stream = await host.open_stream(peer_id, BULK_PROTOCOL)
    channel = libp2p_frames(stream, timeout_s=30)
    for i in range(count):
        await channel.send_blob(i, 1, "bench", blob)
        assert LENGTH.unpack(await read_exactly(stream.read, LENGTH.size))[0] == len(blob)
    await stream.close()


async def send_fastpath(host, peer_id: str, blob: bytes, count: int, is_encrypted: bool) -> None:
    async with open_fastpath(host, peer_id, is_encrypted=is_encrypted, timeout_s=30) as channel:
        for i in range(count):
            await channel.send_blob(i, 1, "bench", blob)


async def send_raw(port: int, blob: bytes, count: int) -> None:
    sock = await trio.open_tcp_stream("127.0.0.1", port)
    async with sock:
        for _ in range(count):
            await sock.send_all(LENGTH.pack(len(blob)))
            await sock.send_all(blob)
            assert LENGTH.unpack(await read_exactly(sock.receive_some, LENGTH.size))[0] == len(blob)


async def measure_paths(blob_bytes: int, count: int, repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        child = subprocess.Popen([sys.executable, "-m", "bench.bench_net", "--serve", tmp],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            info = json.loads(await trio.to_thread.run_sync(child.stdout.readline))
            async with open_host(HostConfig(identity_path=Path(tmp) / "sender.key")) as host:
                peer_id = await host.dial(info["addr"])
                return await _rounds(host, peer_id, info["raw_port"], bytes(blob_bytes), count, repeats)
        finally:
            child.stdin.close()
            child.wait(timeout=10)


async def _rounds(host, peer_id: str, raw_port: int, blob: bytes, count: int, repeats: int) -> dict:
    senders = {
        "libp2p": lambda: send_libp2p(host, peer_id, blob, count),
        "fastpath-aead": lambda: send_fastpath(host, peer_id, blob, count, True),
        "fastpath-auth": lambda: send_fastpath(host, peer_id, blob, count, False),
        "raw": lambda: send_raw(raw_port, blob, count),
    }
    rates: dict[str, list[float]] = {name: [] for name in PATHS}
    for name in PATHS:  # warm-up: connections, thread pool, page faults
        await senders[name]()
    for _ in range(repeats):
        for name in PATHS:
            start = time.perf_counter()
            await senders[name]()
            rates[name].append(len(blob) * count / (time.perf_counter() - start) / 1e6)
    medians = {name: statistics.median(r) for name, r in rates.items()}
    return {name: {"mb_per_s": round(m, 1), "ratio_to_raw": round(m / medians["raw"], 3),
                   "runs_mb_per_s": [round(x, 1) for x in rates[name]]} for name, m in medians.items()}


def emit(index: int, **fields) -> None:
    print(json.dumps({"t": time.time(), "i": index, **fields}), flush=True)


async def run_bench_peer(identity_path: str, index: int, dial_addr: str | None) -> None:
    """One swarm peer process: liveness plus a load topic; obeys `dial ADDR`, `publish SEQ` on stdin."""
    async with open_host(HostConfig(identity_path=identity_path)) as host, open_gossip(host) as gossip:
        if dial_addr:
            await host.dial(dial_addr)
            host.nursery.start_soon(host.keep_connected, dial_addr)
        profile = HardwareProfile(peer_id=host.peer_id, host=f"bench-{index}", gpu="A40", num_gpus=1, tflops=150.0,
                                  memory_gb=48.0, memory_bandwidth_gbs=696.0, is_emulated=True)
        live = await host.nursery.start(run_liveness, host, gossip, profile)
        await gossip.subscribe(TOPIC_LOAD, lambda sender, msg: emit(index, load=msg.sequence), types=(LoadReport,))
        emit(index, addr=host.addrs[0], peer=host.peer_id)
        host.nursery.start_soon(_report_views, index, live)
        while line := await trio.to_thread.run_sync(sys.stdin.readline):
            command, arg = line.split()
            if command == "dial":
                host.nursery.start_soon(host.keep_connected, arg)
            elif command == "publish":
                await gossip.publish(TOPIC_LOAD, LoadReport(host.peer_id, int(arg)), timeout_s=30)


async def _report_views(index: int, live) -> None:
    last = None
    while True:
        view = (len(live.membership.member_ids), live.election.term, live.election.coordinator_id,
                len(live.host.connected_peer_ids()), num_outbound_dropped())
        if view != last:
            emit(index, members=view[0], term=view[1], coordinator=view[2], connections=view[3], dropped=view[4])
            last = view
        await trio.sleep(0.01)


class SwarmProcesses:
    """`num_peers` peer processes; their JSON lines are gathered by one reader thread each."""

    def __init__(self, tmp: str, num_peers: int) -> None:
        self.events: queue.Queue = queue.Queue()
        self.procs: list[subprocess.Popen] = []
        self.views: dict[int, tuple] = {}
        self.info: dict[int, dict] = {}
        self.loads: dict[int, dict[int, float]] = {}
        self.connections: dict[int, int] = {}
        self.dropped: dict[int, int] = {}  # gossip RPCs each peer dropped (its outbound queues were full)
        for i in range(num_peers):
            if i == 1:
                self.wait(lambda: 0 in self.info)
            dial = [self.info[0]["addr"]] if i else []
            proc = subprocess.Popen([sys.executable, "-m", "bench.bench_net", "--peer", f"{tmp}/{i}.key", str(i),
                                     *dial], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            threading.Thread(target=self._read, args=(proc,), daemon=True).start()
            self.procs.append(proc)

    def _read(self, proc) -> None:
        for line in proc.stdout:
            self.events.put(json.loads(line))

    def wait(self, predicate, timeout_s: float = 60.0):
        """Apply events until predicate() holds; returns the time of the event that made it true."""
        deadline = time.time() + timeout_s
        t = time.time()
        while not predicate():
            event = self.events.get(timeout=max(0.01, deadline - time.time()))
            t, i = event["t"], event["i"]
            if "addr" in event:
                self.info[i] = event
            elif "members" in event:
                self.views[i] = (event["members"], event["term"], event["coordinator"])
                self.connections[i] = event["connections"]
                self.dropped[i] = event["dropped"]
            elif "load" in event:
                self.loads.setdefault(event["load"], {})[i] = t
        return t

    def send(self, index: int, line: str) -> None:
        self.procs[index].stdin.write(line + "\n")
        self.procs[index].stdin.flush()

    def agreed(self, alive: list[int], old_term: int = 0) -> bool:
        views = {self.views.get(i) for i in alive}
        if len(views) != 1 or None in views:
            return False
        members, term, coordinator = next(iter(views))
        return members == len(alive) and coordinator is not None and term > old_term

    def cpu_fraction(self, since_s: float) -> float:
        """Mean CPU share (user + system, of one core) of the peer processes since `since_s` (wall clock)."""
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for proc in self.procs:
            try:
                fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
            except (OSError, IndexError):
                continue
        return total / len(self.procs) / (time.time() - since_s)

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait(timeout=10)


def measure_swarm(num_peers: int, num_messages: int) -> dict:
    """`_measure_swarm`, reporting a phase that did not finish in time instead of failing."""
    result: dict = {"where": f"{num_peers} peer processes on 127.0.0.1"}
    try:
        _measure_swarm(num_peers, num_messages, result)
    except queue.Empty:
        result["connections_at_timeout"] = result.pop("_connections", None)
        result["views_at_timeout"] = {i: [v[0], v[1], (v[2] or "")[-6:]] for i, v in result.pop("_views").items()}
        result["gossip_receivers_at_timeout"] = {seq: sorted(got) for seq, got in result.pop("_loads").items()}
        result["unfinished"] = f"a phase timed out (no event for 30-60 s); finished: {sorted(result)}"
    return result


def _measure_swarm(num_peers: int, num_messages: int, result: dict) -> None:
    """Election, gossip convergence and coordinator fail-over with `num_peers` peer processes.

    Topology: peer 0 acts as the bootstrap every other peer dials; then each peer also dials the next
    one (a ring). The clocks are the machine's wall clock, shared by all processes.
    """
    with tempfile.TemporaryDirectory() as tmp:
        started_s = time.time()
        swarm = SwarmProcesses(tmp, num_peers)
        result["_connections"], result["_views"], result["_loads"] = swarm.connections, swarm.views, swarm.loads
        try:
            everyone = list(range(num_peers))
            swarm.wait(lambda: len(swarm.info) == num_peers)
            for i in range(1, num_peers):
                swarm.send(i, f"dial {swarm.info[(i % (num_peers - 1)) + 1]['addr']}")
            started = max(e["t"] for e in swarm.info.values())
            result["election_s"] = round(swarm.wait(lambda: swarm.agreed(everyone)) - started, 3)
            delays = []
            for seq in range(num_messages):
                sender = seq % num_peers
                sent = time.time()
                swarm.send(sender, f"publish {seq}")
                swarm.wait(lambda seq=seq: len(swarm.loads.get(seq, {})) == num_peers - 1, 30)
                delays.append(max(swarm.loads[seq].values()) - sent)
            result["gossip_all_reached_median_ms"] = round(1000 * statistics.median(delays), 1)
            result["gossip_all_reached_max_ms"] = round(1000 * max(delays), 1)
            _, old_term, coordinator = swarm.views[0]
            first = next(i for i, e in swarm.info.items() if e["peer"] == coordinator)
            killed = time.time()
            os.kill(swarm.procs[first].pid, signal.SIGKILL)
            rest = [i for i in everyone if i != first]
            failover_s = swarm.wait(lambda: swarm.agreed(rest, old_term)) - killed
            result["coordinator_sigkill_to_new_coordinator_s"] = round(failover_s, 3)
            for key in ("_connections", "_views", "_loads"):
                result.pop(key)
        finally:
            result["gossip_rpcs_dropped"] = sum(swarm.dropped.values())
            result["peer_cpu_share_of_a_core"] = round(swarm.cpu_fraction(started_s), 3)
            result["machine_load_average_1min"] = os.getloadavg()[0]
            swarm.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_net", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller transfers, fewer repeats")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("--swarm-peers", type=int, default=8, help="peer processes for the swarm figures")
    parser.add_argument("--skip-paths", action="store_true", help="only the swarm figures")
    parser.add_argument("--skip-swarm", action="store_true", help="only the KV-transfer figures")
    parser.add_argument("--serve", metavar="DIR", help=argparse.SUPPRESS)
    parser.add_argument("--peer", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        trio.run(serve, args.serve)
        return 0
    if args.peer:
        trio.run(run_bench_peer, args.peer[0], int(args.peer[1]), args.peer[2] if len(args.peer) > 2 else None)
        return 0
    blob_mib, count, repeats = (16, 2, 3) if args.quick else (64, 2, 5)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    paths = {} if args.skip_paths else trio.run(measure_paths, blob_mib << 20, count, repeats)
    swarm = {} if args.skip_swarm else measure_swarm(args.swarm_peers, 4 if args.quick else 8)
    result = {"date": started, "blob_mib": blob_mib, "blobs_per_run": count, "repeats": repeats,
              "paths": paths, "swarm": swarm}
    if not args.json:
        for name, figure in paths.items():
            print(f"{name:14s} {figure['mb_per_s']:8.1f} MB/s  x{figure['ratio_to_raw']:.3f} of raw")
        for name, value in swarm.items():
            print(f"{name:30s} {value}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
