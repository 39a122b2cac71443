"""Block exhaustion, pre-emption, abort, bad inputs and sampling: the engine keeps serving correctly."""

from __future__ import annotations

import pytest
from engine_helpers import hf_greedy, make_engine, random_prompts, run_all

from peers.engine import SamplingParams
from peers.engine.kv_cache import BlockManager
from peers.engine.scheduler import Scheduler, Sequence
from peers.errors import CapacityError, PromptError, RequestError, SamplingError

PARAMS = SamplingParams(max_tokens=24, ignore_eos=True)


def test_block_exhaustion_preempts_the_newest_and_tokens_stay_correct(tiny_model_dir, hf_tiny):
    prompts = random_prompts(6, seed=21, max_len_tokens=30)
    expected = [hf_greedy(hf_tiny, p, PARAMS.max_tokens) for p in prompts]
    engine = make_engine(tiny_model_dir, block_size_tokens=4, num_kv_blocks=24)  # room for about two requests
    for i, p in enumerate(prompts):
        engine.add(f"r{i}", p, params=PARAMS)
    outputs = run_all(engine)
    assert [outputs[f"r{i}"] for i in range(len(prompts))] == expected
    assert engine.scheduler.num_preemptions > 0
    assert engine.scheduler.blocks.num_free_blocks == 24


def test_scheduler_preempts_newest_running_sequence_first():
    blocks = BlockManager(num_blocks=4, block_size_tokens=2)
    scheduler = Scheduler(blocks, max_num_seqs=8, max_num_batched_tokens=100)
    old, new = (Sequence(name, [1, 2, 3, 4], 4, SamplingParams(), frozenset()) for name in ("old", "new"))
    scheduler.add(old)
    scheduler.add(new)
    assert scheduler.schedule() == ([old, new], True)  # 2 blocks each: the cache is full
    old.token_ids.append(5)
    new.token_ids.append(5)
    seqs, is_prefill = scheduler.schedule()  # old needs a third block: new is pre-empted
    assert (seqs, is_prefill) == ([old], False)
    assert list(scheduler.waiting) == [new] and new.num_preemptions == 1 and new.block_ids == []
    assert scheduler.take_preempted() == ["new"]


def test_abort_frees_blocks_and_other_requests_continue(tiny_model_dir, hf_tiny):
    prompts = random_prompts(3, seed=22)
    engine = make_engine(tiny_model_dir)
    for i, p in enumerate(prompts):
        engine.add(f"r{i}", p, params=PARAMS)
    engine.step()
    engine.abort("r1")
    with pytest.raises(RequestError, match="unknown request"):
        engine.abort("r1")
    outputs = run_all(engine)
    assert "r1" not in outputs or len(outputs["r1"]) < PARAMS.max_tokens
    assert outputs["r0"] == hf_greedy(hf_tiny, prompts[0], PARAMS.max_tokens)[1:]  # step 1 was not collected
    assert engine.scheduler.blocks.num_used_blocks == 0


def test_bad_inputs_get_clear_errors_and_the_engine_keeps_serving(tiny_model_dir, hf_tiny):
    engine = make_engine(tiny_model_dir, max_model_len_tokens=64, num_kv_blocks=8, block_size_tokens=16)
    prompt = random_prompts(1, seed=23)[0][:20]
    engine.add("good", prompt, params=PARAMS)
    engine.step()
    with pytest.raises(PromptError, match="empty"):
        engine.add("empty", "")
    with pytest.raises(PromptError, match="empty"):
        engine.add("empty-ids", [])
    with pytest.raises(PromptError, match="context"):
        engine.add("long", [1] * 64)
    with pytest.raises(PromptError, match="vocabulary"):
        engine.add("vocab", [1, 100_000])
    with pytest.raises(RequestError, match="already in use"):
        engine.add("good", prompt)
    with pytest.raises(CapacityError, match="KV blocks"):
        make_engine(tiny_model_dir, num_kv_blocks=2, block_size_tokens=4).add("big", [1] * 10, params=PARAMS)
    for bad in ({"temperature": -1}, {"top_p": 0}, {"top_p": 1.5}, {"top_k": -2}, {"max_tokens": 0}, {"seed": -5},
                {"stop": ("",)}):
        with pytest.raises(SamplingError):
            SamplingParams(**bad)
    assert run_all(engine)["good"] == hf_greedy(hf_tiny, prompt, PARAMS.max_tokens)[1:]


def test_seeded_sampling_is_reproducible_and_top_k_1_is_greedy(tiny_model_dir):
    prompts = random_prompts(3, seed=24)

    def outputs(params):
        engine = make_engine(tiny_model_dir)
        for i, p in enumerate(prompts):
            engine.add(f"r{i}", p, params=params)
        return run_all(engine)

    seeded = SamplingParams(temperature=1.0, top_p=0.95, seed=3, max_tokens=16, ignore_eos=True)
    assert outputs(seeded) == outputs(seeded)
    assert outputs(seeded) != outputs(SamplingParams(temperature=1.0, seed=4, max_tokens=16, ignore_eos=True))
    top1 = SamplingParams(temperature=1.5, top_k=1, seed=5, max_tokens=16, ignore_eos=True)
    assert outputs(top1) == outputs(SamplingParams(max_tokens=16, ignore_eos=True))


def test_stop_strings_cut_the_text_and_finish_the_request(tiny_model_dir):
    engine = make_engine(tiny_model_dir)
    engine.add("free", "hello", params=SamplingParams(max_tokens=12, ignore_eos=True))
    events = []
    while engine.has_work():
        events += engine.step()
    text = "".join(e.text for e in events)
    assert text, "the random model produced no printable text"
    stop = text[len(text) // 2:len(text) // 2 + 1]
    engine.add("stopped", "hello", params=SamplingParams(max_tokens=12, ignore_eos=True, stop=(stop,)))
    events = []
    while engine.has_work():
        events += engine.step()
    assert events[-1].finish_reason == "stop"
    assert "".join(e.text for e in events) == text[:text.index(stop)]


def test_chat_messages_use_the_model_template(tiny_model_dir):
    engine = make_engine(tiny_model_dir)
    ids = engine.add("chat", messages=[{"role": "user", "content": "hi"}], params=PARAMS)
    assert engine.codec.decode(ids) == "<|user|>hi\n<|assistant|>"
    with pytest.raises(PromptError, match="messages"):
        engine.add("bad-chat", messages=[{"content": "no role"}])
