"""KV hand-off between a prefill-role and a decode-role engine, and hidden states between pipeline stages."""

from __future__ import annotations

import pytest
from engine_helpers import TINY_CONFIG, make_engine, random_prompts, run_all, write_tiny_model

from kernels import KvFormat
from peers.engine import SamplingParams
from peers.errors import HandoffError, RequestError

PARAMS = SamplingParams(max_tokens=16, ignore_eos=True)


def both_outputs(folder, prompts, params=PARAMS, **settings) -> list[list[int]]:
    engine = make_engine(folder, **settings)
    for i, p in enumerate(prompts):
        engine.add(f"r{i}", p, params=params)
    outputs = run_all(engine)
    return [outputs[f"r{i}"] for i in range(len(prompts))]


def prefill_then_decode(folder, prompts, fmt: KvFormat, params=PARAMS, decode_settings: dict | None = None,
                        **settings) -> list[list[int]]:
    """Prefill in one engine, export, import into a decode engine (settings as the prefill's unless given)."""
    prefill = make_engine(folder, role="prefill", **settings)
    decode = make_engine(folder, role="decode", **(settings if decode_settings is None else decode_settings))
    for i, p in enumerate(prompts):
        prefill.add(f"r{i}", p, params=params)
    firsts = {}
    while prefill.has_work():
        for event in prefill.step():
            assert event.finish_reason == "prefilled"
            firsts[event.request_id] = event
    for request_id, event in firsts.items():
        blob = prefill.export_kv(request_id, fmt)
        decode.import_kv(request_id, blob, prompt_token_ids=list(event.prompt_token_ids),
                         output_token_ids=list(event.token_ids), params=params)
    assert prefill.scheduler.blocks.num_used_blocks == 0  # exported requests are released
    rest = run_all(decode)
    return [list(firsts[f"r{i}"].token_ids) + rest[f"r{i}"] for i in range(len(prompts))]


def test_fp16_handoff_gives_exactly_the_tokens_of_a_both_engine(tiny_model_dir):
    prompts = random_prompts(8, seed=11)
    assert prefill_then_decode(tiny_model_dir, prompts, KvFormat(bits=16)) == both_outputs(tiny_model_dir, prompts)


def test_seeded_sampling_survives_the_handoff(tiny_model_dir):
    prompts = random_prompts(4, seed=12)
    params = SamplingParams(temperature=0.8, top_p=0.9, top_k=50, seed=7, max_tokens=12, ignore_eos=True)
    assert prefill_then_decode(tiny_model_dir, prompts, KvFormat(bits=16), params) == both_outputs(
        tiny_model_dir, prompts, params)


@pytest.mark.parametrize("bits", [8, 4])
def test_quantised_handoff_runs_and_keeps_the_first_token(tiny_model_dir, bits):
    prompts = random_prompts(4, seed=13)
    got = prefill_then_decode(tiny_model_dir, prompts, KvFormat(bits=bits, group_size=16, value_group_size=16))
    want = both_outputs(tiny_model_dir, prompts)
    assert [g[0] for g in got] == [w[0] for w in want]  # the first token comes from the prefill engine
    assert all(len(g) == PARAMS.max_tokens for g in got)


def test_kv_from_another_model_or_cut_short_is_refused_and_others_continue(tiny_model_dir, tmp_path):
    other = write_tiny_model(tmp_path / "other", dict(TINY_CONFIG), seed=1)
    prompt = random_prompts(1, seed=14)[0]
    foreign = make_engine(other, role="prefill")
    foreign.add("x", prompt, params=PARAMS)
    (event,) = foreign.step()
    foreign_blob = foreign.export_kv("x", KvFormat(bits=16))

    decode = make_engine(tiny_model_dir, role="decode")
    prefill = make_engine(tiny_model_dir, role="prefill")
    prefill.add("good", prompt, params=PARAMS)
    (good,) = prefill.step()
    blob = prefill.export_kv("good", KvFormat(bits=16))
    decode.import_kv("good", blob, prompt_token_ids=prompt, output_token_ids=list(good.token_ids), params=PARAMS)
    decode.step()

    kwargs = {"prompt_token_ids": prompt, "output_token_ids": list(event.token_ids), "params": PARAMS}
    with pytest.raises(HandoffError, match="fingerprint|model"):
        decode.import_kv("foreign", foreign_blob, **kwargs)
    with pytest.raises(HandoffError):
        decode.import_kv("short", blob[: len(blob) // 2], **kwargs)
    with pytest.raises(HandoffError, match="tokens"):
        decode.import_kv("wrong-length", blob, prompt_token_ids=prompt + [1], output_token_ids=[2], params=PARAMS)
    assert set(decode.seqs) == {"good"}
    assert len(run_all(decode)["good"]) == PARAMS.max_tokens - 2


def test_roles_refuse_what_they_do_not_do(tiny_model_dir):
    with pytest.raises(RequestError, match="import_kv"):
        make_engine(tiny_model_dir, role="decode").add("r", [1, 2, 3])
    with pytest.raises(RequestError, match="prefill-role"):
        make_engine(tiny_model_dir, role="prefill").import_kv("r", b"", prompt_token_ids=[1], output_token_ids=[2])


def run_pipeline(stages, prompts, params=PARAMS) -> list[list[int]]:
    first = stages[0]
    for i, p in enumerate(prompts):
        first.add(f"r{i}", p, params=params)
    outputs: dict[str, list[int]] = {}
    while first.has_work():
        blob = first.step_hidden()
        for stage in stages[1:]:
            blob = stage.run_hidden(blob)
        for event in first.accept_tokens(blob):
            outputs.setdefault(event.request_id, []).extend(event.token_ids)
    released = first.take_released_ids()
    for stage in stages[1:]:
        stage.release_remote(released)
    return [outputs[f"r{i}"] for i in range(len(prompts))]


def test_pipeline_split_gives_the_tokens_of_one_engine(tiny_model_dir):
    prompts = random_prompts(6, seed=15)
    want = both_outputs(tiny_model_dir, prompts)
    two = [make_engine(tiny_model_dir, last_layer=2), make_engine(tiny_model_dir, first_layer=2)]
    assert run_pipeline(two, prompts) == want
    three = [make_engine(tiny_model_dir, last_layer=1), make_engine(tiny_model_dir, first_layer=1, last_layer=3),
             make_engine(tiny_model_dir, first_layer=3)]
    assert run_pipeline(three, prompts) == want
    assert all(stage.scheduler.blocks.num_used_blocks == 0 for stage in three)  # released downstream too


def test_pipeline_stage_refuses_bad_hidden_blobs(tiny_model_dir, tmp_path):
    first = make_engine(tiny_model_dir, last_layer=2)
    first.add("r", [5, 6, 7], params=PARAMS)
    blob = first.step_hidden()
    wrong_stage = make_engine(tiny_model_dir, first_layer=3)
    with pytest.raises(HandoffError, match="layer"):
        wrong_stage.run_hidden(blob)
    second = make_engine(tiny_model_dir, first_layer=2)
    with pytest.raises(HandoffError, match="cut short|payload"):
        second.run_hidden(blob[:-10])
    other = make_engine(write_tiny_model(tmp_path / "other", dict(TINY_CONFIG), seed=2), first_layer=2)
    with pytest.raises(HandoffError, match="another model"):
        other.run_hidden(blob)
    assert len(first.accept_tokens(second.run_hidden(blob))) == 1
