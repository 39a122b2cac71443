"""Errors of the protocol state machines (`swarm.proto`), rooted at `swarm.errors.SwarmError`."""

from swarm.errors import SwarmError


class ProtoError(SwarmError):
    """A protocol state machine was configured or driven wrongly (a bad setting, time going backwards)."""
