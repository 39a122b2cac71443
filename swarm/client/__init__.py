"""The client SDK: submit prompts to a swarm through any peer, synchronously or under trio."""

from swarm.client.errors import ClientError, GenerationError, UnreachableError
from swarm.client.session import AsyncSwarmClient, Completion
from swarm.client.sync import SwarmClient

__all__ = ["AsyncSwarmClient", "ClientError", "Completion", "GenerationError", "SwarmClient", "UnreachableError"]
