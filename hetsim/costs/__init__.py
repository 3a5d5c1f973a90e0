"""How long one op, transfer or collective takes: physics plus few, named efficiencies."""

from hetsim.costs.collectives import CollectiveCost, allgather_time, allreduce_time, send_time
from hetsim.costs.op_cost import OpCost, op_cost

__all__ = ["CollectiveCost", "OpCost", "allgather_time", "allreduce_time", "op_cost", "send_time"]
