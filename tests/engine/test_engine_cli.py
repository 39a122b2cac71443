"""`swarm generate --local` and `swarm models` on the tiny model folder."""

from __future__ import annotations

import pytest
import torch

from swarm.cli import main


@pytest.mark.parametrize("kv_bits", ["16", "4"])
def test_generate_local_prints_text_and_timings(tiny_model_dir, capsys, kv_bits):
    code = main(["generate", "--local", "--model", str(tiny_model_dir), "--max-tokens", "5", "--kv-bits", kv_bits,
                 "--chat", "--seed", "1", "--temperature", "0.5", "hello"])
    out, err = capsys.readouterr()
    assert code == 0
    assert "TTFT" in err and "TPOT" in err and f"KV {kv_bits}-bit" in err
    if kv_bits == "4":
        assert "handed" in err


def test_generate_without_local_and_with_bad_values_fails_clearly(tiny_model_dir, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SWARM_ADDRS_FILE", str(tmp_path / "no-peer-has-run-here"))
    monkeypatch.delenv("SWARM_PEER", raising=False)
    assert main(["generate", "hi"]) == 1
    assert "--peer" in capsys.readouterr().err  # neither --local nor a peer: says how to name one
    assert main(["generate", "--local", "--model", str(tiny_model_dir), "--top-p", "2", "hi"]) == 1
    assert "top_p" in capsys.readouterr().err


def test_models_lists_given_folders(tiny_model_dir, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SWARM_MODEL_DIR", str(tmp_path))
    assert main(["models", "list", str(tiny_model_dir)]) == 0
    out = capsys.readouterr().out
    assert "LlamaForCausalLM" in out and str(tiny_model_dir) in out
    assert main(["models"]) == 0
    assert "swarm models prepare" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without a CUDA GPU")
def test_generate_local_on_cuda_without_a_gpu_fails_clearly(tiny_model_dir, capsys):
    assert main(["generate", "--local", "--device", "cuda", "--model", str(tiny_model_dir), "hi"]) == 1
    assert "no CUDA device" in capsys.readouterr().err


def test_generate_local_on_the_cpu_answers(tiny_model_dir, capsys):
    code = main(["generate", "--local", "--device", "cpu", "--model", str(tiny_model_dir), "--max-tokens", "3", "hi"])
    assert code == 0 and "TTFT" in capsys.readouterr().err
