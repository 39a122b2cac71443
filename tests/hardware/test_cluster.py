import pytest

from swarm.errors import HardwareError
from swarm.hardware import builtin_clusters, load_cluster, parse_cluster


def test_cloud_32_matches_the_paper():
    cluster = load_cluster("cloud-32")
    assert cluster.num_gpus == 32
    by_type: dict[str, int] = {}
    for host in cluster.hosts:
        by_type[host.gpu.name] = by_type.get(host.gpu.name, 0) + host.num_gpus
        assert host.num_gpus in (2, 4)
    assert by_type == {"A6000": 8, "A5000": 8, "A40": 8, "RTX3090Ti": 8}
    speeds = {cluster.host_gbps(a.name, b.name) for a in cluster.hosts for b in cluster.hosts if a != b}
    assert min(speeds) == 5 and max(speeds) == 40


def test_every_builtin_cluster_loads():
    names = builtin_clusters()
    assert {"cloud-32", "inhouse-8xa100", "network-8", "mixed-4", "mixed-8", "local-3"} <= set(names)
    for name in names:
        assert load_cluster(name).num_gpus > 0


def test_nvlink_host_is_fast_inside():
    cluster = load_cluster("inhouse-8xa100")
    assert cluster.gbps("a100-0/0", "a100-0/7") >= 1000


def test_gpu_ids_stay_stable_after_failures():
    cluster = load_cluster("mixed-8")
    smaller = cluster.without({"a40-0/0", "3090ti-0/0", "3090ti-0/1"})
    assert smaller.num_gpus == 5
    assert "a40-0/1" in smaller.gpu_ids and "a40-0/0" not in smaller.gpu_ids
    assert all(h.name != "3090ti-0" for h in smaller.hosts)
    with pytest.raises(HardwareError, match="no GPU 'a40-0/0'"):
        smaller.host_of("a40-0/0")


def test_custom_gpu_table_and_links():
    cluster = parse_cluster("""
        [gpu.MyCard]
        tflops = 100
        memory_gb = 32
        memory_bandwidth_gbs = 900
        [[host]]
        name = "x"
        gpu = "MyCard"
        count = 2
        [[host]]
        name = "y"
        gpu = "A40"
        [network]
        default_gbps = 7
        [[network.link]]
        between = ["x", "y"]
        gbps = 25
    """)
    assert cluster.gpu("x/1").memory_gb == 32
    assert cluster.gbps("x/0", "y/0") == 25


@pytest.mark.parametrize("text, message", [
    ("[[host]]\nname='a'\ngpu='A40'\ncount=0", r"host 'a': 'count' must be an integer from 1 to 64, got 0"),
    ("[[host]]\nname='a'\ngpu='Z9'", r"host 'a': unknown GPU 'Z9'"),
    ("[[host]]\nname='a'\ngpu='A40'\ncolour='red'", r"unknown field\(s\) \['colour'\]"),
    ("[[host]]\nname='a'\ngpu='A40'\n[[host]]\nname='a'\ngpu='A40'", "host names must be unique"),
    ("[network]\ndefault_gbps=1", r"no \[\[host\]\] tables"),
    ("[[host]]\nname='a'\ngpu='A40'\n[network]\ndefault_gbps=-1", r"'default_gbps' must be greater than 0"),
    ("[[host]]\nname='a'\ngpu='A40'\n[[network.link]]\nbetween=['a','b']\ngbps=1", r"unknown host 'b'"),
    ("[[host]\nname='a'", "not valid TOML"),
    ("[gpu.X]\ntflops=1\n[[host]]\nname='a'\ngpu='X'", r"\[gpu.X\]: missing \['memory_bandwidth_gbs', 'memory_gb'\]"),
])
def test_bad_cluster_files_name_the_field(text, message):
    with pytest.raises(HardwareError, match=message) as info:
        parse_cluster(text, source="c.toml")
    assert str(info.value).startswith("c.toml")


def test_missing_file_and_unknown_name(tmp_path):
    with pytest.raises(HardwareError, match="does not exist"):
        load_cluster(tmp_path / "nope.toml")
    with pytest.raises(HardwareError, match="cloud-32"):
        load_cluster("cloud-99")


def test_cluster_from_profiles_one_host_per_peer():
    from swarm.hardware import cluster_from_profiles, declared_profile

    a = declared_profile("A40", peer_id="peerAAAAAA1", host="box")
    b = declared_profile("RTX3090Tix2", peer_id="peerBBBBBB2", host="box")
    c = declared_profile("RTX3090Ti", peer_id="peerCCCCCC3", host="other")
    cluster, peer_of = cluster_from_profiles([c, b, a], {frozenset(("peerAAAAAA1", "peerBBBBBB2")): 40.0})
    assert cluster.num_gpus == 4
    assert peer_of == {"box-AAAAA1": "peerAAAAAA1", "box-BBBBB2": "peerBBBBBB2", "other": "peerCCCCCC3"}
    assert cluster.gbps("box-AAAAA1/0", "box-BBBBB2/1") == 40.0
    assert cluster.gbps("box-AAAAA1/0", "other/0") == cluster.default_gbps
    assert cluster.gpu("box-BBBBB2/1").memory_gb == 24
