import json

import pytest

from swarm.errors import ModelError
from swarm.models import KNOWN_MODELS, model_spec


@pytest.mark.parametrize("name, billions", [("llama-7b", 6.74), ("llama-13b", 13.0), ("llama-30b", 32.5),
                                            ("llama-65b", 65.3), ("llama-2-70b", 69.0), ("llama-3-8b", 8.03),
                                            ("llama-3-70b", 70.6), ("smollm2-135m", 0.1345)])
def test_parameter_counts_match_the_published_sizes(name, billions):
    assert model_spec(name).num_params / 1e9 == pytest.approx(billions, rel=0.01)


def test_kv_bytes_per_token_as_in_the_paper_and_gqa_aware():
    assert model_spec("llama-30b").kv_bytes_per_token / 1e6 == pytest.approx(1.60, rel=0.01)
    assert model_spec("llama-7b").kv_bytes_per_token / 1e6 == pytest.approx(0.52, rel=0.01)
    # Llama-2-70B has 8 KV heads of 64: an eighth of the no-GQA size.
    assert model_spec("llama-2-70b").kv_bytes_per_token == 80 * 2 * 8 * 128 * 2


def test_stage_bytes_add_up_to_the_whole_model():
    m = model_spec("llama-13b")
    assert m.stage_weight_bytes(0, 13) + m.stage_weight_bytes(13, 40) == m.weight_bytes


def test_from_hf_config_folder(tmp_path):
    config = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
              "intermediate_size": 128, "vocab_size": 100, "max_position_embeddings": 256,
              "tie_word_embeddings": True}
    (tmp_path / "config.json").write_text(json.dumps(config))
    spec = model_spec(tmp_path)
    assert (spec.head_dim, spec.kv_dim, spec.tied_embeddings) == (16, 32, True)


def test_bad_models_are_named(tmp_path):
    with pytest.raises(ModelError, match="unknown model 'gpt-5'.*llama-30b"):
        model_spec("gpt-5")
    (tmp_path / "config.json").write_text('{"hidden_size": 64}')
    with pytest.raises(ModelError, match="lacks the field 'num_attention_heads'"):
        model_spec(tmp_path)
    (tmp_path / "config.json").write_text('{"num_hidden_layers": 2, "hidden_size": 60, "num_attention_heads": 7, '
                                          '"intermediate_size": 8, "vocab_size": 10}')
    with pytest.raises(ModelError, match="must divide"):
        model_spec(tmp_path)


def test_every_known_model_is_consistent():
    for spec in KNOWN_MODELS.values():
        assert spec.hidden_size == spec.num_heads * spec.head_dim
