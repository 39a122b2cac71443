"""Errors of the KV kernels: a bad format request, or KV bytes from a peer that do not decode."""

from swarm.errors import ConfigError, WireError


class KvConfigError(ConfigError):
    """A KvFormat or a kernel argument outside its allowed range (the message names field and range)."""


class KvFormatError(WireError):
    """A KV blob that does not match what the receiver expects, or is corrupt, truncated or oversized."""
