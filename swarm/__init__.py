"""swarm: serve large language models from a peer-to-peer swarm of mixed, preemptible GPUs."""

__version__ = "0.1.0"
