"""Errors of the client SDK, rooted at `swarm.errors.SwarmError`."""

from swarm.errors import SwarmError


class ClientError(SwarmError):
    """A request through the swarm failed."""


class UnreachableError(ClientError):
    """None of the given peers could be reached (the message lists why, per address)."""


class GenerationError(ClientError):
    """The swarm answered with a failure: `code` ("bad_request", "unavailable", "failed", ...) and why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
