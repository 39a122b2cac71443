"""`swarm keygen` and `swarm bootstrap` end to end, as subprocesses."""

import os
import signal
import stat
import subprocess
import sys

import pytest
import trio

from swarm.net.host import open_host
from swarm.net.rpc import call
from swarm.wire.messages import PeerList, PeerListRequest

SWARM = [sys.executable, "-m", "swarm"]


def test_keygen_writes_a_private_key_and_refuses_to_overwrite(tmp_path):
    path = tmp_path / "keys" / "swarm.key"
    done = subprocess.run([*SWARM, "keygen", str(path)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and str(path) in done.stdout
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.read_text().startswith("/key/swarm/psk/1.0.0/\n/base16/\n")
    again = subprocess.run([*SWARM, "keygen", str(path)], capture_output=True, text=True, timeout=30)
    assert again.returncode == 1 and "--force" in again.stderr
    forced = subprocess.run([*SWARM, "keygen", str(path), "--force"], capture_output=True, text=True, timeout=30)
    assert forced.returncode == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_bootstrap_prints_its_address_serves_peers_and_stops_cleanly(tmp_path, host_config, signum):
    key = tmp_path / "swarm.key"
    subprocess.run([*SWARM, "keygen", str(key)], check=True, capture_output=True, timeout=30)
    node = subprocess.Popen([*SWARM, "bootstrap", "--listen", "/ip4/127.0.0.1/tcp/0", "--swarm-key", str(key),
                             "--identity", str(tmp_path / "bootstrap.key")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        addr = node.stdout.readline().strip()
        assert addr.startswith("/ip4/127.0.0.1/tcp/") and "/p2p/12D3Koo" in addr

        async def main():
            with trio.fail_after(20):
                async with open_host(host_config(swarm_key_path=key)) as a, \
                        open_host(host_config(swarm_key_path=key)) as b:
                    node_id = await a.dial(addr)
                    await b.dial(addr)
                    listed = PeerList(())
                    while not listed.addrs:  # b's listen address is known once identify has run
                        listed = await call(a, node_id, "/swarm/peers/1.0.0", PeerListRequest(), expect=PeerList)
                        await trio.sleep(0.1)
                    assert [x.rsplit("/", 1)[1] for x in listed.addrs] == [b.peer_id]

        trio.run(main)
        node.send_signal(signum)
        assert node.wait(timeout=10) == 0
    finally:
        node.kill()
        node.wait(timeout=5)
