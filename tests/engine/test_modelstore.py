"""The offline model store: finding models by name or path, listing them, and clear errors."""

from __future__ import annotations

import pytest
from engine_helpers import write_tiny_model

from swarm import modelstore
from swarm.errors import ModelError


def test_missing_model_error_says_how_to_provide_one(tmp_path, monkeypatch):
    monkeypatch.setenv("SWARM_MODEL_DIR", str(tmp_path / "empty"))
    with pytest.raises(ModelError, match="swarm models prepare"):
        modelstore.resolve_model(None)
    with pytest.raises(ModelError, match="config.json"):
        modelstore.resolve_model(tmp_path)  # a folder, but not a model


def test_prepared_models_are_found_by_name_and_listed(tmp_path, monkeypatch):
    monkeypatch.setenv("SWARM_MODEL_DIR", str(tmp_path))
    folder = write_tiny_model(tmp_path / "tiny")
    assert modelstore.list_models() == []  # not marked complete: a half-written folder never counts
    (folder / modelstore.COMPLETE_MARKER).write_text("{}\n")
    assert modelstore.resolve_model("tiny") == folder
    (entry,) = modelstore.list_models()
    assert (entry.name, entry.num_layers, entry.hidden_size) == ("tiny", 4, 64)
    listed = modelstore.list_models([str(folder)])
    assert [e.name for e in listed] == ["tiny", str(folder)]


def test_prepare_refuses_unknown_names(tmp_path, monkeypatch):
    monkeypatch.setenv("SWARM_MODEL_DIR", str(tmp_path))
    with pytest.raises(ModelError, match="folder path"):
        modelstore.prepare("llama-70b")
