"""Fixtures of the daemon tests: the engine tests' tiny random-weight model folder (loaded from their conftest)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("engine_fixtures", Path(__file__).parents[1] / "engine" / "conftest.py")
engine_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(engine_fixtures)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return engine_fixtures.write_tiny_model(tmp_path_factory.mktemp("tiny-llama"))
