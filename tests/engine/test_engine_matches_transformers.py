"""The engine's greedy tokens equal transformers' own `generate` on the same fp32 weights."""

from __future__ import annotations

from engine_helpers import hf_greedy, make_engine, random_prompts, run_all

from peers.engine import SamplingParams

NUM_PROMPTS = 24
MAX_TOKENS = 20


def test_greedy_tokens_equal_transformers_alone_and_batched(tiny_model_dir, hf_tiny):
    prompts = random_prompts(NUM_PROMPTS, seed=1)
    expected = [hf_greedy(hf_tiny, p, MAX_TOKENS) for p in prompts]
    params = SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True)

    alone = make_engine(tiny_model_dir)
    for i, prompt in enumerate(prompts):
        alone.add(f"alone-{i}", prompt, params=params)
        assert run_all(alone)[f"alone-{i}"] == expected[i]

    batched = make_engine(tiny_model_dir, max_num_batched_tokens=200)  # several prefill steps, mixed lengths
    for i, prompt in enumerate(prompts):
        batched.add(f"r{i}", prompt, params=params)
    outputs = run_all(batched)
    assert [outputs[f"r{i}"] for i in range(NUM_PROMPTS)] == expected


def test_requests_joining_a_running_batch_get_the_same_tokens(tiny_model_dir, hf_tiny):
    prompts = random_prompts(8, seed=2)
    expected = [hf_greedy(hf_tiny, p, MAX_TOKENS) for p in prompts]
    engine = make_engine(tiny_model_dir)
    outputs: dict[str, list[int]] = {}
    for step in range(200):
        if step < len(prompts) * 3 and step % 3 == 0:  # a new request every third step
            engine.add(f"r{step // 3}", prompts[step // 3], params=SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True))
        for event in engine.step():
            outputs.setdefault(event.request_id, []).extend(event.token_ids)
    assert [outputs[f"r{i}"] for i in range(len(prompts))] == expected


def test_eos_stops_a_request_like_transformers(tiny_model_dir, hf_tiny):
    eos = hf_tiny.config.eos_token_id  # the fixture switches eos off in generate; the engine stops at it
    engine = make_engine(tiny_model_dir)
    prompt = random_prompts(1, seed=3)[0]
    forced = SamplingParams(max_tokens=5, stop_token_ids=(hf_greedy(hf_tiny, prompt, 3)[2],))
    engine.add("stops-at-third", prompt, params=forced)
    engine.add("eos-default", prompt, params=SamplingParams(max_tokens=5))
    outputs = run_all(engine)
    assert outputs["stops-at-third"] == hf_greedy(hf_tiny, prompt, 3)
    assert len(outputs["eos-default"]) == 5 or outputs["eos-default"][-1] == eos


def test_bfloat16_engine_mostly_agrees_with_fp32(tiny_model_dir):
    prompts = random_prompts(4, seed=4)
    outputs = {}
    for dtype in ("float32", "bfloat16"):
        engine = make_engine(tiny_model_dir, dtype=dtype)
        for i, p in enumerate(prompts):
            engine.add(f"r{i}", p, params=SamplingParams(max_tokens=4, ignore_eos=True))
        outputs[dtype] = run_all(engine)
    first_tokens_equal = sum(outputs["float32"][k][0] == outputs["bfloat16"][k][0] for k in outputs["float32"])
    assert first_tokens_equal >= 3
