"""`swarm demo`: the whole local swarm answers a real prompt, and Ctrl-C stops every child process."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from swarm.errors import ModelError
from swarm.modelstore import models_dir, resolve_model

pytestmark = pytest.mark.slow
REPO_ROOT = Path(__file__).resolve().parents[2]


def processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:  # the process ended while we looked
                pass
    return pids


def test_demo_answers_status_finds_it_and_ctrl_c_stops_every_child(tmp_path):
    try:
        resolve_model(None)
    except ModelError as e:
        pytest.skip(f"the default model is not prepared ({e})")
    command = [sys.executable, "-m", "swarm", "demo", "--prompt", "What is the capital of France?",
               "--max-tokens", "12"]
    # a private HOME: the demo leaves its address in ~/.swarm/peer.addrs for a plain `swarm status`
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HOME": str(tmp_path), "SWARM_MODEL_DIR": str(models_dir())}
    demo = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=REPO_ROOT)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = demo.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "serving until Ctrl-C" in line:
                break
        output = "".join(lines)
        assert "serving until Ctrl-C" in output, output[-3000:]
        assert "plan epoch" in output and "prefill" in output and "decode" in output
        assert "Paris" in output and "TTFT" in output
        workdir = re.search(r"logs and identities: (\S+)", output).group(1)
        assert len(processes_mentioning(workdir)) == 4  # bootstrap node and three peers
        status = subprocess.run([sys.executable, "-m", "swarm", "status", "--json"], capture_output=True, text=True,
                                env=env, cwd=REPO_ROOT, timeout=60)
        doc = json.loads(status.stdout)
        serving = [m for m in doc["members"] if m["is_serving"]]
        assert len(serving) == 3 and doc["epoch"] >= 1 and doc["plan"]["epoch"] == doc["epoch"]
        assert sorted(m["profile"]["gpu"] for m in serving) == ["A40", "RTX3090Ti", "RTX3090Ti"]
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=20) == 0
        assert processes_mentioning(workdir) == [] and not Path(workdir).exists()
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()


LAUNCH_AND_DIE = """
import os
from swarm.client.localswarm import LocalSwarm
swarm = LocalSwarm([])  # the bootstrap node alone: no model to load, same launcher
swarm.__enter__()
print(swarm.workdir, flush=True)
os._exit(0)  # no clean-up at all, as after a SIGKILL
"""


def test_children_stop_when_their_launcher_dies_without_cleaning_up():
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run([sys.executable, "-c", LAUNCH_AND_DIE], capture_output=True,
                          text=True, env=env, cwd=REPO_ROOT, timeout=120)
    workdir = done.stdout.strip()
    assert workdir, done.stderr[-2000:]
    try:
        deadline = time.monotonic() + 15
        while processes_mentioning(workdir) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert processes_mentioning(workdir) == []
    finally:
        for pid in processes_mentioning(workdir):
            os.kill(pid, signal.SIGKILL)
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)


def test_a_local_swarm_that_fails_to_start_says_why_and_keeps_its_logs():
    from swarm.client.errors import ClientError
    from swarm.client.localswarm import LocalSwarm, PeerSpec

    swarm = LocalSwarm([PeerSpec("p-bad", "NoSuchGPU")])
    with pytest.raises(ClientError, match="unknown GPU 'NoSuchGPU'"):
        swarm.__enter__()
    try:
        assert "unknown GPU" in swarm.log("p-bad") and processes_mentioning(str(swarm.workdir)) == []
    finally:
        import shutil

        shutil.rmtree(swarm.workdir, ignore_errors=True)
