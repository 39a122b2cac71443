"""`LocalSwarm`: a whole swarm on this machine, as child processes on 127.0.0.1 (for `swarm demo`, tests, bench).

A bootstrap node (`swarm bootstrap`) starts first; each peer then joins through it with its own
identity file in a private temporary directory and, if given, a declared GPU profile. Children run in
their own session (Ctrl-C in the terminal reaches only the parent, which stops them) and are always
stopped on exit: SIGTERM, then SIGKILL after a grace period. Every wait has a deadline.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from swarm.client.errors import ClientError
from swarm.client.sync import SwarmClient
from swarm.wire.requests import StatusReply

REPO_ROOT = Path(__file__).resolve().parents[2]
STOP_GRACE_S = 5.0
UNUSED_PEER_WAIT_S = 8.0


@dataclass(frozen=True)
class PeerSpec:
    """One child: its name in plans and its declared GPU profile (None: the bootstrap node, no model)."""

    name: str
    profile: str | None = None
    extra_args: tuple[str, ...] = ()


@dataclass
class LocalSwarm:
    peers: list[PeerSpec]
    model: str | None = None
    kv_bits: int = 4
    extra_args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    workdir: Path | None = None
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    addrs: dict[str, list[str]] = field(default_factory=dict)

    def __enter__(self) -> LocalSwarm:
        self.workdir = Path(tempfile.mkdtemp(prefix="swarm-local-"))
        self.is_workdir_ours = True
        try:
            self.start()
        except BaseException as e:
            self.stop(keep_logs=not isinstance(e, KeyboardInterrupt))
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # after a failure the logs are what explains it: keep the directory (identities are throw-away)
        self.stop(keep_logs=exc_type is not None and not issubclass(exc_type, KeyboardInterrupt))

    @property
    def bootstrap_addr(self) -> str:
        return self.addrs["bootstrap"][0]

    def client(self, name: str = "bootstrap", **options) -> SwarmClient:
        return SwarmClient(self.addrs[name][:1], **options)

    def start(self, timeout_s: float = 60.0) -> None:
        self.spawn(PeerSpec("bootstrap"), bootstrap=None)
        self.wait_for_addrs("bootstrap", timeout_s)
        for spec in self.peers:
            self.spawn(spec, bootstrap=self.bootstrap_addr)
        for spec in self.peers:
            self.wait_for_addrs(spec.name, timeout_s)

    def spawn(self, spec: PeerSpec, bootstrap: str | None) -> subprocess.Popen:
        """Start one child: `swarm bootstrap` for the model-less node (no `bootstrap` address to join),
        `swarm join` otherwise."""
        assert self.workdir is not None
        common = ["--listen", "/ip4/127.0.0.1/tcp/0", "--identity", str(self.workdir / f"{spec.name}.key"),
                  "--addrs-file", str(self.workdir / f"{spec.name}.addrs")]
        if bootstrap is None:
            args = [sys.executable, "-m", "swarm", "bootstrap", *common, *spec.extra_args]
        else:
            args = [sys.executable, "-m", "swarm", "join", *common, "--name", spec.name, "--kv-bits",
                    str(self.kv_bits), "--bootstrap", bootstrap, *self.extra_args, *spec.extra_args]
            if spec.profile is None:
                args.append("--no-model")
            else:
                args += ["--profile", spec.profile] + (["--model", str(self.model)] if self.model else [])
        # several torch processes on a few cores: one thread each beats oversubscription by far; the
        # bootstrap node takes its name and KV format (it is the entry peer) from the environment
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
               "OMP_NUM_THREADS": "1", "SWARM_TORCH_THREADS": "1", "SWARM_IS_EXITING_WITH_PARENT": "1",
               "SWARM_NAME": spec.name, "SWARM_KV_BITS": str(self.kv_bits), **self.env}
        log = (self.workdir / f"{spec.name}.log").open("wb")
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT,
                                   start_new_session=True)
        self.processes[spec.name] = process
        return process

    def wait_for_addrs(self, name: str, timeout_s: float) -> list[str]:
        path = self.workdir / f"{name}.addrs"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.processes[name].poll() is not None:
                raise ClientError(f"{name} exited with code {self.processes[name].returncode}:\n{self.log(name)[-3000:]}")
            if path.is_file() and path.read_text().strip():
                self.addrs[name] = path.read_text().split()
                return self.addrs[name]
            time.sleep(0.1)
        raise ClientError(f"{name} did not start listening within {timeout_s:g} s:\n{self.log(name)[-3000:]}")

    def wait_for_plan(self, timeout_s: float = 120.0, *, num_serving: int | None = None,
                      min_epoch: int = 0) -> StatusReply:
        """The coordinator's status once its plan puts all `num_serving` peers in groups that are ready
        (or, if the planner leaves some peer out, once such a plan has stood for UNUSED_PEER_WAIT_S)."""
        num_serving = len(self.peers) if num_serving is None else num_serving
        deadline = time.monotonic() + timeout_s
        last, since = None, (None, 0.0)
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                last = self.client(connect_timeout_s=3.0).status()
            except ClientError:
                time.sleep(0.3)
                continue
            if is_settled(last, num_serving, min_epoch):
                if all(m.group_id >= 0 for m in last.members if m.is_serving):
                    return last
                since = since if since[0] == last.epoch else (last.epoch, time.monotonic())
                if time.monotonic() - since[1] >= UNUSED_PEER_WAIT_S:
                    return last
            time.sleep(0.3)
        from swarm.client.status import format_status

        seen = format_status(last) if last is not None else "(no peer answered a status request)"
        raise ClientError(f"no ready plan within {timeout_s:g} s; the swarm as last seen:\n{seen}\n"
                          f"peer logs are in {self.workdir}")

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None and not getattr(process, "is_killed", False):
                raise ClientError(f"{name} exited with code {process.returncode}:\n{self.log(name)[-3000:]}")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        process = self.processes[name]
        process.is_killed = True
        process.send_signal(sig)
        process.wait(timeout=STOP_GRACE_S)

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.is_file() else ""

    def stop(self, *, keep_logs: bool = False) -> None:
        """Stop every child (SIGTERM, then SIGKILL), then remove the temporary directory unless `keep_logs`."""
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_GRACE_S)
        if getattr(self, "is_workdir_ours", False):
            if not keep_logs:
                shutil.rmtree(self.workdir, ignore_errors=True)
            self.is_workdir_ours = False


def is_settled(status: StatusReply, num_serving: int, min_epoch: int = 0) -> bool:
    """True when the answering peer follows a plan of at least `min_epoch` that places `num_serving`
    serving peers' worth of members and every peer in a group is ready for it."""
    serving = [m for m in status.members if m.is_serving]
    in_plan = [m for m in serving if m.group_id >= 0]
    return (bool(status.plan_json) and status.epoch >= min_epoch and len(serving) == num_serving
            and bool(in_plan) and all(m.is_ready for m in in_plan))
