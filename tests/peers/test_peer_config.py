"""PeerConfig: validation and the merge order file < environment < flags."""

from __future__ import annotations

import pytest

from peers.config import PeerConfig, load_peer_config
from peers.daemon_errors import PeerConfigError


def test_flags_override_environment_which_overrides_the_file(tmp_path):
    path = tmp_path / "peer.toml"
    path.write_text('[peer]\nkv_bits = 8\nrate_rps = 2.0\nname = "from-file"\n')
    config = load_peer_config(path, env={"SWARM_KV_BITS": "16", "SWARM_NAME": "from-env"},
                              flags={"name": "from-flag", "rate_rps": None})
    assert (config.kv_bits, config.name, config.rate_rps) == (16, "from-flag", 2.0)


def test_environment_lists_and_booleans_are_parsed():
    addr = "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWabc"
    config = load_peer_config(env={"SWARM_BOOTSTRAP": f"{addr},{addr}", "SWARM_IS_SERVING": "false"})
    assert config.bootstrap == (addr, addr) and config.is_serving is False


@pytest.mark.parametrize("settings, field", [
    ({"kv_bits": 3}, "kv_bits"),
    ({"bootstrap": ("/ip4/1.2.3.4/tcp/1",)}, "peer id"),
    ({"listen": ("localhost:4001",)}, "multiaddr"),
    ({"gossip_interval_s": 3.0, "failure_timeout_s": 2.0}, "failure_timeout_s"),
    ({"rate_rps": -1.0}, "rate_rps"),
])
def test_bad_settings_are_refused_with_the_field_named(settings, field):
    with pytest.raises(PeerConfigError, match=field):
        PeerConfig(**settings)


def test_unknown_setting_and_bad_type_are_refused(tmp_path):
    with pytest.raises(PeerConfigError, match="unknown peer settings"):
        load_peer_config(flags={"kv_bitz": 4})
    with pytest.raises(PeerConfigError, match="kv_bits"):
        load_peer_config(env={"SWARM_KV_BITS": "four"})
    bad = tmp_path / "bad.toml"
    bad.write_text("kv_bits = [")
    with pytest.raises(PeerConfigError, match="not valid TOML"):
        load_peer_config(bad, env={})


@pytest.mark.parametrize("flags, message", [
    (["--profile", "NoSuchGPU"], "unknown GPU 'NoSuchGPU'"),
    (["--model", "/nonexistent/model"], "not available offline"),
    (["--swarm-key", "/nonexistent/swarm.key"], "cannot read swarm key"),
    (["--no-model", "--listen", "/ip4/203.0.113.9/tcp/1"], "cannot listen on"),
])
def test_join_says_what_is_wrong_without_a_traceback(tmp_path, flags, message):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    args = [sys.executable, "-m", "swarm", "join", "--identity", str(tmp_path / "id.key"), "--addrs-file",
            str(tmp_path / "addrs")]
    if "--listen" not in flags:
        args += ["--listen", "/ip4/127.0.0.1/tcp/0"]
    done = subprocess.run(args + flags, capture_output=True, text=True, cwd=root, timeout=120,
                          env={**__import__("os").environ, "PYTHONPATH": str(root)})
    assert done.returncode == 1
    assert message in done.stderr and "Traceback" not in done.stderr


def test_device_and_dtype_default_to_auto_and_are_validated():
    from peers.config import PeerConfig, load_peer_config
    from peers.daemon_errors import PeerConfigError

    config = PeerConfig()
    assert (config.device, config.dtype) == ("auto", "auto")
    assert load_peer_config(env={"SWARM_DEVICE": "cuda:1", "SWARM_DTYPE": "bfloat16"}).device == "cuda:1"
    for bad in ({"device": "gpu"}, {"device": "cuda:x"}, {"dtype": "int8"}):
        with pytest.raises(PeerConfigError, match=next(iter(bad))):
            PeerConfig(**bad)


def test_the_profile_says_which_device_the_engine_uses(tiny_model_dir):
    import torch

    from peers.config import PeerConfig
    from peers.daemon import describe_self

    profile, _, _ = describe_self(PeerConfig(profile="A40", model=str(tiny_model_dir)), "peer")
    assert profile.device == ("cuda" if torch.cuda.is_available() else "cpu")
    profile, _, _ = describe_self(PeerConfig(profile="A40", model=str(tiny_model_dir), device="cpu"), "peer")
    assert profile.device == "cpu" and profile.is_emulated
