"""Errors of the simulator, rooted at `swarm.errors.SwarmError`."""

from __future__ import annotations

from swarm.errors import ConfigError, SwarmError


class SimError(SwarmError):
    """The simulator was asked for something it cannot do (an unknown experiment, a bad plan)."""


class TraceError(ConfigError):
    """A spot or workload trace file is missing or malformed (the message names the file and line)."""
