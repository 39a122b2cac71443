"""Fixtures of the daemon tests: the engine tests' tiny random-weight model folder (their helper, loaded by path)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("engine_helpers_for_swarm",
                                               Path(__file__).parents[1] / "engine" / "engine_helpers.py")
engine_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(engine_helpers)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return engine_helpers.write_tiny_model(tmp_path_factory.mktemp("tiny-llama"))
