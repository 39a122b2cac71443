"""Hardware: the GPU catalog, clusters of hosts and links, and probing the local machine."""

from swarm.hardware.catalog import GpuSpec, catalog, gpu_spec
from swarm.hardware.cluster import (
    Cluster,
    Host,
    builtin_clusters,
    cluster_from_profiles,
    load_cluster,
    parse_cluster,
)
from swarm.hardware.probe import declared_profile, parse_declared, probe
from swarm.wire.hardware import HardwareProfile

__all__ = ["GpuSpec", "catalog", "gpu_spec", "Cluster", "Host", "builtin_clusters", "cluster_from_profiles", "load_cluster",
           "parse_cluster", "declared_profile", "parse_declared", "probe", "HardwareProfile"]
