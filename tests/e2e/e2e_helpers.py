"""What the e2e tests compare a swarm's answers with: the same model's greedy tokens from one local engine."""

from __future__ import annotations

from peers.engine import Engine, EngineConfig, SamplingParams


def local_tokens(folder, prompt: str, max_tokens: int) -> list[int]:
    """Greedy tokens of `prompt` from one local engine on `folder` (eos ignored, `max_tokens` of them)."""
    engine = Engine.load(folder, EngineConfig(num_kv_blocks=64))
    engine.add("r", prompt, params=SamplingParams(max_tokens=max_tokens, ignore_eos=True))
    tokens = []
    while engine.has_work():
        tokens += [t for e in engine.step() for t in e.token_ids]
    return tokens
