"""Where the engine runs (`EngineConfig.device`): resolution and errors on any machine; weights, cache
and tokens on the CPU here; the same on a CUDA GPU in the tests marked `needs_cuda` (skipped without one)."""

from __future__ import annotations

import pytest
import torch
from engine_helpers import hf_greedy, make_engine, random_prompts, run_all
from test_engine_handoff import both_outputs, prefill_then_decode, run_pipeline

from kernels import KvFormat
from peers.engine import EngineConfig, SamplingParams
from peers.errors import EngineConfigError

has_cuda = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not has_cuda, reason="needs a CUDA GPU")
needs_no_cuda = pytest.mark.skipif(has_cuda, reason="checks the error of a machine without a CUDA GPU")
PARAMS = SamplingParams(max_tokens=12, ignore_eos=True)
SEEDED = [SamplingParams(temperature=0.9, top_p=0.95, top_k=40, seed=100 + i, max_tokens=8, ignore_eos=True)
          for i in range(3)]
# What the engine drew for SEEDED on random_prompts(3, seed=21) before it had a device setting (CPU, fp32).
SEEDED_CPU_TOKENS = [[54, 311, 132, 276, 204, 198, 82, 195], [205, 41, 230, 179, 122, 14, 243, 191],
                     [197, 61, 243, 195, 87, 163, 4, 308]]


def outputs(engine, prompts, params) -> list[list[int]]:
    params = params if isinstance(params, list) else [params] * len(prompts)
    for i, (p, sp) in enumerate(zip(prompts, params, strict=True)):
        engine.add(f"r{i}", p, params=sp)
    got = run_all(engine)
    return [got[f"r{i}"] for i in range(len(prompts))]


def stage_tensors(engine) -> list[torch.Tensor]:
    stage = engine.stage
    weights = [t for layer in stage.layers for t in vars(layer).values() if t is not None]
    return [stage.embed, stage.norm, stage.head, stage.cos, *weights, *engine.cache.keys, *engine.cache.values]


def test_cpu_and_auto_resolve_to_the_cpu_in_float32_without_a_gpu():
    assert EngineConfig(device="cpu").torch_device() == torch.device("cpu")
    assert EngineConfig(device="cpu").torch_dtype() == torch.float32
    assert EngineConfig(device="cpu", dtype="bfloat16").torch_dtype() == torch.bfloat16
    want = torch.device("cuda", torch.cuda.current_device()) if has_cuda else torch.device("cpu")
    assert EngineConfig().torch_device() == want


@needs_no_cuda
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_without_a_gpu_is_refused_naming_the_fix(device):
    with pytest.raises(EngineConfigError, match=f"device '{device}'.*no CUDA device.*'cpu'"):
        EngineConfig(device=device)


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:x", "CPU", "mps"])
def test_malformed_device_is_refused(device):
    with pytest.raises(EngineConfigError, match="'auto', 'cpu', 'cuda' or 'cuda:N'"):
        EngineConfig(device=device)


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_cpu_engine_gives_the_tokens_it_gave_before_devices(tiny_model_dir, hf_tiny, device):
    if device == "auto" and has_cuda:
        pytest.skip("auto means cuda on this machine")
    prompts = random_prompts(4, seed=20)
    greedy = outputs(make_engine(tiny_model_dir, device=device), prompts, PARAMS)
    assert greedy == [hf_greedy(hf_tiny, p, PARAMS.max_tokens) for p in prompts]
    seeded = outputs(make_engine(tiny_model_dir, device=device), random_prompts(3, seed=21), SEEDED)
    assert seeded == SEEDED_CPU_TOKENS


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
def test_weights_and_kv_cache_live_on_the_configured_device(tiny_model_dir, device):
    engine = make_engine(tiny_model_dir, device=device, dtype="float32")
    assert engine.device.type == device
    assert {(t.device.type, t.dtype) for t in stage_tensors(engine)} == {(device, torch.float32)}
    pipeline_stage = make_engine(tiny_model_dir, device=device, first_layer=2)
    assert pipeline_stage.stage.embed is None
    assert {t.device.type for layer in pipeline_stage.stage.layers for t in vars(layer).values()
            if t is not None} == {device}


# ---- on a CUDA GPU ------------------------------------------------------------------------------------


@needs_cuda
def test_missing_cuda_index_is_refused():
    count = torch.cuda.device_count()
    with pytest.raises(EngineConfigError, match=f"has {count} CUDA device"):
        EngineConfig(device=f"cuda:{count}")


@needs_cuda
def test_cuda_defaults_to_bf16_or_fp16(tiny_model_dir):
    engine = make_engine(tiny_model_dir, device="cuda")
    want = torch.bfloat16 if torch.cuda.get_device_capability(engine.device) >= (8, 0) else torch.float16
    assert engine.stage.dtype == want and engine.cache.keys[0].dtype == want


@needs_cuda
def test_fp32_tokens_on_cuda_equal_cpu_tokens(tiny_model_dir):
    prompts = random_prompts(6, seed=22)
    want = outputs(make_engine(tiny_model_dir, device="cpu"), prompts, PARAMS)
    assert outputs(make_engine(tiny_model_dir, device="cuda", dtype="float32"), prompts, PARAMS) == want


@needs_cuda
def test_seeded_sampling_on_cuda_repeats_and_survives_the_handoff(tiny_model_dir):
    prompts = random_prompts(3, seed=21)
    first = outputs(make_engine(tiny_model_dir, device="cuda", dtype="float32"), prompts, SEEDED)
    assert first == outputs(make_engine(tiny_model_dir, device="cuda", dtype="float32"), prompts, SEEDED)
    params = SEEDED[0]
    settings = {"device": "cuda", "dtype": "float32"}
    handed = prefill_then_decode(tiny_model_dir, prompts, KvFormat(bits=16), params, **settings)
    assert handed == both_outputs(tiny_model_dir, prompts, params, **settings)


@needs_cuda
@pytest.mark.parametrize("bits", [16, 8, 4])
def test_prefill_export_import_decode_on_cuda(tiny_model_dir, bits):
    prompts = random_prompts(4, seed=23)
    settings = {"device": "cuda", "dtype": "float32"}
    fmt = KvFormat(bits=bits, group_size=16, value_group_size=16)
    got = prefill_then_decode(tiny_model_dir, prompts, fmt, PARAMS, **settings)
    want = both_outputs(tiny_model_dir, prompts, PARAMS, **settings)
    if bits == 16:
        assert got == want
    else:
        assert [g[0] for g in got] == [w[0] for w in want] and all(len(g) == PARAMS.max_tokens for g in got)


@needs_cuda
def test_kv_moves_between_a_cpu_and_a_cuda_engine(tiny_model_dir):
    prompts = random_prompts(3, seed=24)
    want = both_outputs(tiny_model_dir, prompts, PARAMS)
    prefill_cpu = prefill_then_decode(tiny_model_dir, prompts, KvFormat(bits=16), PARAMS,
                                      decode_settings={"device": "cuda", "dtype": "float32"})
    assert prefill_cpu == want


@needs_cuda
def test_pipeline_across_cpu_and_cuda_stages_gives_the_tokens_of_one_engine(tiny_model_dir):
    prompts = random_prompts(4, seed=25)
    want = both_outputs(tiny_model_dir, prompts, PARAMS)
    stages = [make_engine(tiny_model_dir, last_layer=2),
              make_engine(tiny_model_dir, first_layer=2, device="cuda", dtype="float32")]
    assert run_pipeline(stages, prompts, PARAMS) == want
    cuda_first = [make_engine(tiny_model_dir, last_layer=1, device="cuda", dtype="float32"),
                  make_engine(tiny_model_dir, first_layer=1, device="cuda", dtype="float32")]
    assert run_pipeline(cuda_first, prompts, PARAMS) == want


@needs_cuda
def test_bf16_both_engine_on_cuda_answers(tiny_model_dir):
    engine = make_engine(tiny_model_dir, device="cuda")  # dtype auto: bf16 (fp16 without bf16)
    engine.add("chat", messages=[{"role": "user", "content": "hello"}], params=PARAMS)
    engine.add("ids", [5, 6, 7, 8], params=SamplingParams(max_tokens=6, temperature=0.7, seed=3, ignore_eos=True))
    texts: dict[str, str] = {}
    tokens: dict[str, list[int]] = {}
    for _ in range(100):
        for event in engine.step():
            texts[event.request_id] = texts.get(event.request_id, "") + event.text
            tokens.setdefault(event.request_id, []).extend(event.token_ids)
        if not engine.has_work():
            break
    assert len(tokens["chat"]) == PARAMS.max_tokens and len(tokens["ids"]) == 6
    assert all(0 <= t < engine.model_config.vocab_size for ts in tokens.values() for t in ts)
    assert texts["chat"]  # byte tokens always decode to some text
    assert engine.scheduler.blocks.num_used_blocks == 0
