"""Dynamic routing: residual blocks skipped per sample (SkipNet gates, BlockDrop policy network)."""
from .blockdrop import BlockDrop, BlockDropSet
from .component import Routing
from .router import RoutingSet, routing_of
from .skipnet import SkipGates, SkipGateSet

__all__ = ["BlockDrop", "BlockDropSet", "Routing", "RoutingSet", "SkipGates", "SkipGateSet", "routing_of"]
