"""Errors of the networking layer (`swarm.net`), all rooted at `swarm.errors.SwarmError`."""

from swarm.errors import ConfigError, SwarmError


class NetError(SwarmError):
    """A network operation failed: a dial, a stream, a deadline, a peer's answer."""


class IdentityError(ConfigError):
    """An identity or swarm-key file is missing, malformed or has unsafe permissions."""


class DialError(NetError):
    """A peer could not be reached (refused, unreachable, or no answer before the deadline)."""


class HandshakeError(DialError):
    """The security handshake did not complete: usually a different swarm key on the other side."""


class DeadlineError(NetError):
    """A wait on a peer ran past its deadline."""


class StreamError(NetError):
    """A stream was reset or closed early, or carried bytes that do not decode."""


class RemoteError(NetError):
    """The remote peer answered an rpc with an error record (its code and message are kept)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
