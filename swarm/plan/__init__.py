"""The planner: cost model, lower level (TP x PP, layer split), routing LP, SLO estimate, tabu upper level,
lightweight re-plan and migration matching. Pure functions, no I/O (DESIGN.md section 5.1).

    from swarm.plan import Problem, base_slo, plan
    result = plan(Problem(cluster, model, workload, base_slo(model, workload), rate_rps=5.0), budget_s=2)

The functions `evaluate`, `replan` and `exhaustive` share their names with their modules; importing
them here, after the modules, makes `swarm.plan.evaluate` the function (the modules stay reachable
as `sys.modules["swarm.plan.evaluate"]` and through `from swarm.plan.evaluate import ...`).
"""

from swarm.plan.cost import Efficiency, GroupCost, group_cost, kv_transfer_s
from swarm.plan.errors import InfeasibleError, InvalidPlanError, PlanError
from swarm.plan.evaluate import Evaluation, evaluate, evaluate_deployments
from swarm.plan.exhaustive import exhaustive
from swarm.plan.migrate import Load, Migration, match_migration
from swarm.plan.parallel import Deployment, configure, with_role
from swarm.plan.problem import Problem, Slo, base_slo
from swarm.plan.replan import replan, surviving_groups
from swarm.plan.search import SearchResult, plan
from swarm.plan.validate import check_problem, validate_plan

__all__ = [
    "Deployment", "Efficiency", "Evaluation", "GroupCost", "InfeasibleError", "InvalidPlanError", "Load",
    "Migration", "PlanError", "Problem", "SearchResult", "Slo", "base_slo", "check_problem", "configure",
    "evaluate", "evaluate_deployments", "exhaustive", "group_cost", "kv_transfer_s", "match_migration", "plan",
    "replan", "surviving_groups", "validate_plan", "with_role",
]
