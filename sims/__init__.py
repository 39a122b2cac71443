"""The discrete-event simulator: the planner's plans executed on a modelled cluster at paper scale.

Layers: `core` (event heap) < `network` (shared links) < `replica` (batching engines) < `cluster_sim`
(a plan on a cluster, failures, re-plans) < `baselines`, `spot`, `workloads` < `experiments`.
`sims` imports only the pure core of swarm (never torch, trio or libp2p).
"""
