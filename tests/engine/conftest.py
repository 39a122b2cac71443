"""Fixtures of the engine tests: the tiny model folder, transformers' model on it, one torch thread."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from engine_helpers import write_tiny_model


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """On a shared 2-core machine, torch's second thread mostly waits for a core (small ops got 10x
    slower under load); one thread keeps these tests fast and their timing steady."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def hf_tiny(tiny_model_dir):
    """transformers' own model on the same folder, fp32, for reference tokens."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    # Never stop at eos (without suppressing it, as min_new_tokens would): compare with ignore_eos=True.
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model
