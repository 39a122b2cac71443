"""The `swarm` dispatcher and the choices between local and swarm generation."""

import subprocess
import sys

from swarm.cli import COMMANDS, main


def test_every_command_module_loads_and_has_help(capsys):
    for name in COMMANDS:
        try:
            main([name, "--help"])
        except SystemExit as e:
            assert e.code == 0, name
        assert name in capsys.readouterr().out


def test_help_imports_no_command_module():
    code = "import sys; from swarm.cli import main\ntry: main(['--help'])\nexcept SystemExit: pass\n" \
           "print(sorted(m for m in sys.modules if m.endswith('_cmd') or m in ('torch', 'trio')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_generate_refuses_contradictory_flags(capsys):
    assert main(["generate", "--local", "--peer", "/ip4/127.0.0.1/tcp/1", "hi"]) == 1
    assert "--local and --peer exclude each other" in capsys.readouterr().err
    assert main(["generate", "--kv-bits", "4", "hi"]) == 1
    assert "--kv-bits applies to --local" in capsys.readouterr().err


def test_no_command_prints_usage(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_a_user_error_inside_a_nursery_is_printed_plainly(capsys, tmp_path):
    # The key file is read inside the daemon's trio nursery: the error arrives as an exception group.
    bad_key = tmp_path / "swarm.key"
    bad_key.write_text("not a key")
    code = main(["join", "--no-model", "--listen", "/ip4/127.0.0.1/tcp/0", "--swarm-key", str(bad_key),
                 "--identity", str(tmp_path / "id.key"), "--addrs-file", str(tmp_path / "addrs")])
    err = capsys.readouterr().err
    assert code == 1 and "swarm join: error:" in err and "Traceback" not in err
