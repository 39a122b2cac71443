"""Errors of the peer daemon (config, plan application, dispatch), rooted at `swarm.errors.SwarmError`."""

from swarm.errors import ConfigError, SwarmError


class DaemonError(SwarmError):
    """The daemon could not do what a request or a plan asked of it."""


class PeerConfigError(ConfigError):
    """A peer setting is missing or out of range (the message names the setting and the allowed values)."""


class NoReplicaError(DaemonError):
    """No ready replica can take a request right now (no plan yet, or its replicas are still loading)."""


class BadRequestError(DaemonError):
    """A replica refused the request itself (prompt too long, bad sampling values): retrying cannot help."""


class ReplicaFailedError(DaemonError):
    """A replica serving a request went away or answered with a failure."""


class PlanApplyError(DaemonError):
    """This peer cannot take its part in a plan (layers it cannot load, a layout it cannot serve)."""
