"""Errors of the peer daemon and its engine, rooted at `swarm.errors.SwarmError`.

Each says what is wrong with one request or one input and how to fix it; the engine keeps serving the
other requests after raising any of them.
"""

from swarm.errors import ConfigError, SwarmError


class EngineError(SwarmError):
    """A request, an input or a hand-off the engine cannot serve."""


class EngineConfigError(EngineError, ConfigError):
    """An engine setting or a model folder the engine cannot use (the message names the field)."""


class PromptError(EngineError):
    """An empty prompt, one longer than the context, or token ids outside the vocabulary."""


class SamplingError(EngineError):
    """A sampling value outside its allowed range (temperature, top-p, top-k, max tokens, seed)."""


class RequestError(EngineError):
    """An unknown or duplicate request id, or an operation the request's state or role does not allow."""


class CapacityError(EngineError):
    """The KV cache can never hold this request, or has no room for an imported one right now."""


class HandoffError(EngineError):
    """KV bytes or hidden-state bytes that do not fit this engine (other model, layers, cut short)."""
