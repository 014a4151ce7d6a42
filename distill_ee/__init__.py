"""distill_ee: a compression framework where early exit is a scheduled policy next to pruning."""

__version__ = "0.1.0"
