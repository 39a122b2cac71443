"""Errors of the planner: no feasible plan, an impossible problem, or a plan that breaks the cluster.

All are rooted at `swarm.errors.SwarmError`; every message names the value at fault and what would fix it.
"""

from swarm.errors import ConfigError, SwarmError


class PlanError(SwarmError):
    """The planner cannot produce or accept a plan."""


class InfeasibleError(PlanError, ConfigError):
    """The problem has no feasible plan: the model fits nowhere, an SLO is below physics, no capacity."""


class InvalidPlanError(PlanError):
    """A plan does not fit the cluster or model it is meant for (unknown GPU, memory, TP span, layers)."""
