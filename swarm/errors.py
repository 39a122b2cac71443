"""The root of every error swarm raises on purpose, and the errors of the shared core.

A user's mistake gets a message that says what is wrong and how to fix it; packages keep their own
errors in their own `errors.py`, all rooted at `SwarmError`.
"""


class SwarmError(Exception):
    """Anything swarm reports on purpose; the CLI prints these without a traceback."""


class ConfigError(SwarmError):
    """A user-supplied file, name or value is invalid (the message names the field and the fix)."""


class HardwareError(ConfigError):
    """An unknown GPU, a malformed cluster file or an impossible hardware declaration."""


class ModelError(ConfigError):
    """An unknown model name or a model folder/config that cannot be read."""


class WorkloadError(ConfigError):
    """An unknown workload name or a malformed workload CSV."""


class WireError(SwarmError):
    """Bytes from a peer (or a plan file) that do not decode to a valid record."""
