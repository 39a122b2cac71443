"""The cluster: hosts of GPUs and the links between them, read from a TOML cluster file.

The file format is in docs/cluster-file.md. GPU ids are "<host>/<index>" and stay stable when GPUs
fail (`Cluster.without`), so plans and re-plans can name the same GPU across changes.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path

from swarm.errors import HardwareError
from swarm.hardware.catalog import GpuSpec, gpu_spec

# Per-direction bandwidth between GPUs of one host with NVLink/NVSwitch: half the bidirectional figure.
_SXM_NVLINK_MIN_GBS = 300
DEFAULT_INTRA_HOST_GBPS = 128.0  # PCIe Gen4 x16 is about 32 GB/s per direction = 256 Gb/s; half in practice
DEFAULT_INTER_HOST_GBPS = 10.0
DEFAULT_LATENCY_S = 0.0005


@dataclass(frozen=True)
class Host:
    """One machine: `count` GPUs of one type (indices stay fixed when some fail)."""

    name: str
    gpu: GpuSpec
    gpu_indices: tuple[int, ...]
    price_per_gpu_hour: float
    intra_gbps: float  # between two GPUs of this host, per direction
    zone: str = ""

    @property
    def num_gpus(self) -> int:
        return len(self.gpu_indices)

    @property
    def gpu_ids(self) -> list[str]:
        return [f"{self.name}/{i}" for i in self.gpu_indices]


@dataclass(frozen=True)
class Cluster:
    """Hosts plus the network between them. Bandwidths are gigaBITS per second, per direction."""

    hosts: tuple[Host, ...]
    default_gbps: float = DEFAULT_INTER_HOST_GBPS
    links: dict[frozenset[str], float] = field(default_factory=dict)
    latency_s: float = DEFAULT_LATENCY_S
    name: str = "cluster"

    def __post_init__(self) -> None:
        names = [h.name for h in self.hosts]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise HardwareError(f"cluster {self.name!r}: host names must be unique, repeated: {duplicates}")

    @property
    def gpu_ids(self) -> list[str]:
        return [gpu_id for host in self.hosts for gpu_id in host.gpu_ids]

    @property
    def num_gpus(self) -> int:
        return sum(h.num_gpus for h in self.hosts)

    @property
    def price_per_hour(self) -> float:
        return sum(h.price_per_gpu_hour * h.num_gpus for h in self.hosts)

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise HardwareError(f"cluster {self.name!r} has no host {name!r}")

    def host_of(self, gpu_id: str) -> Host:
        host_name, _, index = gpu_id.rpartition("/")
        host = self.host(host_name)
        if not index.isdigit() or int(index) not in host.gpu_indices:
            raise HardwareError(f"cluster {self.name!r} has no GPU {gpu_id!r}")
        return host

    def gpu(self, gpu_id: str) -> GpuSpec:
        return self.host_of(gpu_id).gpu

    def host_gbps(self, a: str, b: str) -> float:
        """Bandwidth between two hosts (by name); within one host, its GPU-to-GPU figure."""
        if a == b:
            return self.host(a).intra_gbps
        return self.links.get(frozenset((a, b)), self.default_gbps)

    def gbps(self, gpu_a: str, gpu_b: str) -> float:
        """Bandwidth between two GPUs (by id)."""
        return self.host_gbps(self.host_of(gpu_a).name, self.host_of(gpu_b).name)

    def without(self, gpu_ids: set[str] | list[str]) -> Cluster:
        """The cluster after the given GPUs failed or left; hosts left with no GPU disappear."""
        gone = set(gpu_ids)
        hosts = []
        for h in self.hosts:
            kept = tuple(i for i in h.gpu_indices if f"{h.name}/{i}" not in gone)
            if kept:
                hosts.append(replace(h, gpu_indices=kept))
        return replace(self, hosts=tuple(hosts))


# ---------------------------------------------------------------------------------------------------
# The TOML file

_HOST_FIELDS = {"name", "gpu", "count", "price_per_gpu_hour", "zone", "intra_gbps"}
_GPU_FIELDS = {"tflops", "memory_gb", "memory_bandwidth_gbs", "pcie_gbs", "nvlink_gbs", "price_per_hour"}
_NETWORK_FIELDS = {"intra_host_gbps", "default_gbps", "latency_ms", "link"}
_LINK_FIELDS = {"between", "gbps"}


def builtin_clusters() -> list[str]:
    """Names of the example clusters shipped with swarm."""
    folder = resources.files("swarm.hardware").joinpath("clusters")
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml"))


def load_cluster(name_or_path: str | Path) -> Cluster:
    """A cluster from a built-in name (`cloud-32`) or a TOML file path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise HardwareError(f"cluster file {str(path)!r} does not exist")
        return parse_cluster(path.read_text(encoding="utf-8"), source=str(path), name=path.stem)
    if str(name_or_path) in builtin_clusters():
        text = resources.files("swarm.hardware").joinpath(f"clusters/{name_or_path}.toml").read_text("utf-8")
        return parse_cluster(text, source=f"built-in cluster {name_or_path!r}", name=str(name_or_path))
    raise HardwareError(
        f"no cluster {str(name_or_path)!r}: give a TOML file path or one of {', '.join(builtin_clusters())}")


def parse_cluster(text: str, *, source: str = "<cluster>", name: str = "cluster") -> Cluster:
    """Parse and validate a cluster file; every error names `source`, the field and the value."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise HardwareError(f"{source}: not valid TOML: {e}") from None
    _reject_unknown(doc, {"host", "network", "gpu", "name"}, source, "top level")
    network = doc.get("network", {})
    _reject_unknown(network, _NETWORK_FIELDS, source, "[network]")
    intra = _positive(network, "intra_host_gbps", DEFAULT_INTRA_HOST_GBPS, source, "[network]")
    custom = _custom_gpus(doc.get("gpu", {}), source)
    hosts = doc.get("host")
    if not isinstance(hosts, list) or not hosts:
        raise HardwareError(f"{source}: no [[host]] tables; a cluster needs at least one host")
    parsed = tuple(_host(h, i, custom, intra, source) for i, h in enumerate(hosts))
    names = [h.name for h in parsed]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise HardwareError(f"{source}: host names must be unique, repeated: {repeated}")
    host_names = set(names)
    links = {}
    for i, link in enumerate(network.get("link", [])):
        where = f"[[network.link]] #{i + 1}"
        _reject_unknown(link, _LINK_FIELDS, source, where)
        between = link.get("between")
        if not (isinstance(between, list) and len(between) == 2 and all(isinstance(b, str) for b in between)):
            raise HardwareError(f"{source}: {where}: 'between' must be two host names, got {between!r}")
        for b in between:
            if b not in host_names:
                raise HardwareError(f"{source}: {where}: unknown host {b!r}; hosts are {sorted(host_names)}")
        links[frozenset(between)] = _positive(link, "gbps", None, source, where)
    latency_ms = _positive(network, "latency_ms", DEFAULT_LATENCY_S * 1e3, source, "[network]")
    return Cluster(hosts=parsed, default_gbps=_positive(network, "default_gbps", DEFAULT_INTER_HOST_GBPS,
                                                        source, "[network]"),
                   links=links, latency_s=latency_ms / 1e3, name=str(doc.get("name", name)))


def _host(h: dict, i: int, custom: dict[str, GpuSpec], intra_default: float, source: str) -> Host:
    where = f"[[host]] #{i + 1}"
    if not isinstance(h, dict):
        raise HardwareError(f"{source}: {where} must be a table")
    _reject_unknown(h, _HOST_FIELDS, source, where)
    name = h.get("name")
    if not isinstance(name, str) or not name or "/" in name:
        raise HardwareError(f"{source}: {where}: 'name' must be a non-empty string without '/', got {name!r}")
    where = f"host {name!r}"
    gpu_name = h.get("gpu")
    if not isinstance(gpu_name, str):
        raise HardwareError(f"{source}: {where}: 'gpu' must be a GPU name, got {gpu_name!r}")
    try:
        gpu = custom[gpu_name] if gpu_name in custom else gpu_spec(gpu_name)
    except HardwareError as e:
        raise HardwareError(f"{source}: {where}: {e}") from None
    count = h.get("count", 1)
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 64:
        raise HardwareError(f"{source}: {where}: 'count' must be an integer from 1 to 64, got {count!r}")
    sxm = gpu.nvlink_gbs >= _SXM_NVLINK_MIN_GBS
    intra = _positive(h, "intra_gbps", gpu.nvlink_gbs * 8 / 2 if sxm else intra_default, source, where)
    price = h.get("price_per_gpu_hour", gpu.price_per_hour)
    if not isinstance(price, int | float) or isinstance(price, bool) or price < 0:
        raise HardwareError(f"{source}: {where}: 'price_per_gpu_hour' must be a number >= 0, got {price!r}")
    zone = h.get("zone", "")
    if not isinstance(zone, str):
        raise HardwareError(f"{source}: {where}: 'zone' must be a string, got {zone!r}")
    return Host(name=name, gpu=gpu, gpu_indices=tuple(range(count)), price_per_gpu_hour=float(price),
                intra_gbps=intra, zone=zone)


def _custom_gpus(tables: dict, source: str) -> dict[str, GpuSpec]:
    if not isinstance(tables, dict):
        raise HardwareError(f"{source}: [gpu.NAME] entries must be tables")
    gpus = {}
    for gpu_name, t in tables.items():
        where = f"[gpu.{gpu_name}]"
        if not isinstance(t, dict):
            raise HardwareError(f"{source}: {where} must be a table")
        _reject_unknown(t, _GPU_FIELDS, source, where)
        missing = sorted({"tflops", "memory_gb", "memory_bandwidth_gbs"} - set(t))
        if missing:
            raise HardwareError(f"{source}: {where}: missing {missing} (tflops = dense FP16 TFLOPS, "
                                "memory_gb = GB per GPU, memory_bandwidth_gbs = GB/s)")
        values = {k: _positive(t, k, None, source, where) for k in ("tflops", "memory_gb", "memory_bandwidth_gbs")}
        gpus[gpu_name] = GpuSpec(
            name=gpu_name, **values,
            pcie_gbs=_positive(t, "pcie_gbs", 32.0, source, where),
            nvlink_gbs=_non_negative(t, "nvlink_gbs", 0.0, source, where),
            price_per_hour=_non_negative(t, "price_per_hour", 0.0, source, where))
    return gpus


def _reject_unknown(table: dict, allowed: set[str], source: str, where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise HardwareError(f"{source}: {where}: unknown field(s) {unknown}; allowed: {sorted(allowed)}")


def _number(table: dict, key: str, default: float | None, source: str, where: str) -> float:
    value = table.get(key, default)
    if value is None:
        raise HardwareError(f"{source}: {where}: '{key}' is required")
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise HardwareError(f"{source}: {where}: '{key}' must be a number, got {value!r}")
    return float(value)


def _positive(table: dict, key: str, default: float | None, source: str, where: str) -> float:
    value = _number(table, key, default, source, where)
    if not value > 0:
        raise HardwareError(f"{source}: {where}: '{key}' must be greater than 0, got {value!r}")
    return value


def _non_negative(table: dict, key: str, default: float | None, source: str, where: str) -> float:
    value = _number(table, key, default, source, where)
    if value < 0:
        raise HardwareError(f"{source}: {where}: '{key}' must be 0 or more, got {value!r}")
    return value


# ---------------------------------------------------------------------------------------------------
# A live swarm as a cluster

def cluster_from_profiles(profiles, gbps: dict[frozenset[str], float] | None = None, *,
                          default_gbps: float = DEFAULT_INTER_HOST_GBPS,
                          name: str = "swarm") -> tuple[Cluster, dict[str, str]]:
    """The cluster a set of peers forms: one host per peer, links from measured bandwidths.

    Args:
        profiles: the peers' `HardwareProfile`s.
        gbps: measured bandwidth between two peers, keyed by frozenset of their peer ids (Gbit/s).
    Returns:
        the cluster, and a map from its host names to peer ids (host names are the profiles' `host`,
        suffixed with the end of the peer id where two peers share one).
    """
    profiles = sorted(profiles, key=lambda p: p.peer_id)
    counts: dict[str, int] = {}
    for p in profiles:
        counts[p.host] = counts.get(p.host, 0) + 1
    hosts, peer_of = [], {}
    for p in profiles:
        host_name = p.host if counts[p.host] == 1 else f"{p.host}-{p.peer_id[-6:]}"
        spec = GpuSpec(name=p.gpu, tflops=p.tflops, memory_gb=p.memory_gb,
                       memory_bandwidth_gbs=p.memory_bandwidth_gbs, pcie_gbs=32.0, nvlink_gbs=0.0,
                       price_per_hour=p.price_per_gpu_hour)
        hosts.append(Host(name=host_name, gpu=spec, gpu_indices=tuple(range(p.num_gpus)),
                          price_per_gpu_hour=p.price_per_gpu_hour, intra_gbps=DEFAULT_INTRA_HOST_GBPS,
                          zone=p.zone))
        peer_of[host_name] = p.peer_id
    host_of_peer = {peer: host for host, peer in peer_of.items()}
    links = {frozenset(host_of_peer[q] for q in pair): value for pair, value in (gbps or {}).items()
             if len(pair) == 2 and all(q in host_of_peer for q in pair)}
    return Cluster(hosts=tuple(hosts), default_gbps=default_gbps, links=links, name=name), peer_of
