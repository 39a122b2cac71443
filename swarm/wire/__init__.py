"""Wire records and their codec: every byte from a peer is validated here, once."""

from swarm.wire.codec import WIRE_VERSION, decode, encode, from_primitive, message, to_primitive
from swarm.wire.hardware import HardwareProfile
from swarm.wire.plan import ROLES, Group, Plan, Predicted, Routing, Stage

__all__ = ["WIRE_VERSION", "decode", "encode", "from_primitive", "message", "to_primitive",
           "HardwareProfile", "Plan", "Group", "Stage", "Routing", "Predicted", "ROLES"]
