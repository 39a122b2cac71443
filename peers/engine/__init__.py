"""The engine: a Llama-family model stage with a paged KV cache and continuous batching (see engine.py)."""

from peers.engine.config import EngineConfig, ModelConfig
from peers.engine.engine import Engine, TokenEvent
from peers.engine.sampling import SamplingParams

__all__ = ["Engine", "EngineConfig", "ModelConfig", "SamplingParams", "TokenEvent"]
