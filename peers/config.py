"""`PeerConfig`: everything one peer daemon needs, validated once, merged from file < environment < flags.

The file is TOML (top-level keys, or a `[peer]` table) with the field names below; the environment uses
`SWARM_<FIELD>` (upper case; lists comma-separated); flags come from `swarm join`. Each source overrides
the one before it, field by field.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from peers.daemon_errors import PeerConfigError

KV_BITS = (4, 8, 16)
DTYPES = ("auto", "float32", "bfloat16", "float16")  # auto: bfloat16 on a GPU (float16 without bf16), float32 on the CPU
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")  # auto: cuda when torch sees a GPU, else cpu


@dataclass(frozen=True)
class PeerConfig:
    """One peer: network identity, what it serves, how it plans when it is the coordinator, its timeouts."""

    name: str = ""  # the host name this peer gives itself in the plan; "" = this machine's name
    bootstrap: tuple[str, ...] = ()
    listen: tuple[str, ...] = ("/ip4/0.0.0.0/tcp/0",)
    identity_path: str | None = None
    swarm_key_path: str | None = None
    is_serving: bool = True  # False: a bootstrap node (membership only, no model)
    model: str | None = None  # a prepared model name or a folder; None = the default model
    profile: str | None = None  # declared emulated GPU, e.g. "A40" or "RTX3090Tix2"; None = probe
    device: str = "auto"  # the engine's device: "auto", "cpu", "cuda" or "cuda:N"
    dtype: str = "auto"  # the engine's weights and KV cache dtype; "auto" follows the device
    torch_threads: int = 0  # 0: torch's default; several peers on one small box run best with 1 each
    kv_bits: int = 4
    kv_cache_bytes: int = 256 << 20
    max_num_seqs: int = 32
    workload: str = "azure-conv"  # what the coordinator plans for
    rate_rps: float = 1.0
    slo_scale: float = 5.0
    plan_budget_s: float = 1.0
    gossip_interval_s: float = 0.5
    failure_timeout_s: float = 2.0
    settle_s: float = 1.0  # membership must be still this long before a (re-)plan
    request_timeout_s: float = 120.0
    ready_wait_s: float = 60.0  # how long an entry peer waits for a ready replica
    bandwidth_probe_bytes: int = 4 << 20
    emulated_link_gbps: float = 10.0  # planned speed of a link between two emulated peers (Gbit/s)
    plan_file: str | None = None  # as coordinator, publish this plan (JSON) instead of planning
    addrs_file: str | None = None  # write this peer's multiaddrs here once listening (for scripts)
    is_exiting_with_parent: bool = False  # stop when the launching process dies (swarm demo's children)

    def __post_init__(self) -> None:
        if self.kv_bits not in KV_BITS:
            raise PeerConfigError(f"kv_bits must be one of {KV_BITS} (16 = uncompressed), got {self.kv_bits!r}")
        if self.dtype not in DTYPES:
            raise PeerConfigError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if not (isinstance(self.device, str) and DEVICE_PATTERN.fullmatch(self.device)):
            raise PeerConfigError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        if not self.listen:
            raise PeerConfigError("listen needs at least one multiaddr, e.g. /ip4/0.0.0.0/tcp/4001")
        for text in (*self.listen, *self.bootstrap):
            if not text.startswith("/"):
                raise PeerConfigError(f"{text!r} is not a multiaddr (they start with '/', e.g. /ip4/1.2.3.4/tcp/4001)")
        if any("/p2p/" not in text for text in self.bootstrap):
            raise PeerConfigError("every bootstrap address needs its peer id: /ip4/.../tcp/PORT/p2p/<peer id>")
        if self.name and ("/" in self.name or not self.name.isprintable()):
            raise PeerConfigError(f"name {self.name!r} must be printable and contain no '/'")
        for name in ("rate_rps", "slo_scale", "plan_budget_s", "gossip_interval_s", "failure_timeout_s",
                     "request_timeout_s", "ready_wait_s", "emulated_link_gbps"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0 < value <= 86_400):
                raise PeerConfigError(f"{name} must be a positive number (seconds or a rate), got {value!r}")
        if self.settle_s < 0:
            raise PeerConfigError(f"settle_s must be >= 0, got {self.settle_s}")
        if self.failure_timeout_s <= self.gossip_interval_s:
            raise PeerConfigError(f"failure_timeout_s ({self.failure_timeout_s}) must exceed gossip_interval_s "
                                  f"({self.gossip_interval_s}), or every peer looks dead")
        if not (isinstance(self.torch_threads, int) and 0 <= self.torch_threads <= 1024):
            raise PeerConfigError(f"torch_threads must be 0 (torch's default) to 1024, got {self.torch_threads!r}")
        for name in ("kv_cache_bytes", "max_num_seqs", "bandwidth_probe_bytes"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) > 0):
                raise PeerConfigError(f"{name} must be a positive integer, got {getattr(self, name)!r}")

    @property
    def host_name(self) -> str:
        return self.name or socket.gethostname().replace("/", "-")


FIELDS = {f.name: f for f in dataclasses.fields(PeerConfig)}


def load_peer_config(path: str | Path | None = None, env: Mapping[str, str] | None = None,
                     flags: Mapping[str, object] | None = None) -> PeerConfig:
    """Merge a config file, `SWARM_*` environment variables and flags (None values are not set)."""
    values: dict[str, object] = {}
    if path:
        values.update(_from_file(Path(path)))
    values.update(_from_env(os.environ if env is None else env))
    values.update({k: v for k, v in (flags or {}).items() if v is not None})
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise PeerConfigError(f"unknown peer settings {unknown}; known: {sorted(FIELDS)}")
    try:
        return PeerConfig(**{k: _coerce(k, v) for k, v in values.items()})
    except TypeError as e:
        raise PeerConfigError(f"bad peer settings: {e}") from None


def _from_file(path: Path) -> dict[str, object]:
    try:
        doc = tomllib.loads(path.read_text())
    except OSError as e:
        raise PeerConfigError(f"cannot read peer config {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise PeerConfigError(f"{path}: not valid TOML: {e}") from None
    table = doc.get("peer", doc)
    if not isinstance(table, dict):
        raise PeerConfigError(f"{path}: [peer] must be a table")
    return dict(table)


def _from_env(env: Mapping[str, str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for name in FIELDS:
        key = f"SWARM_{name.upper()}"
        if key in env and env[key] != "":
            out[name] = env[key]
    return out


def _coerce(name: str, value: object) -> object:
    """Turn a file or environment value into the field's type; a clear error names the field."""
    kind = str(FIELDS[name].type)
    try:
        if kind.startswith("tuple"):
            items = value.split(",") if isinstance(value, str) else list(value)  # type: ignore[arg-type]
            return tuple(str(v).strip() for v in items if str(v).strip())
        if kind == "bool":
            if isinstance(value, str):
                if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("1", "true", "yes")
            return bool(value)
        if kind == "int":
            return int(value)  # type: ignore[arg-type]
        if kind == "float":
            return float(value)  # type: ignore[arg-type]
        return None if value is None else str(value)
    except (TypeError, ValueError):
        raise PeerConfigError(f"peer setting {name}={value!r}: expected {kind}") from None
