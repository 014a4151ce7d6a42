"""Thinning: physical removal of pruned filters and channels, recipes to reload thinned checkpoints."""
from .extensions import ChannelRemover, FilterRemover, StructureRemover
from .graph import DependencyGraph, build_dependency_graph
from .groups import ChannelGroup, Consumer
from .recipe import Recipe, apply_recipe, apply_thinning_recipes, thinning_recipes
from .remove import Kept, remove_channels, remove_filters

__all__ = [
    "ChannelGroup",
    "ChannelRemover",
    "Consumer",
    "DependencyGraph",
    "FilterRemover",
    "Kept",
    "Recipe",
    "StructureRemover",
    "apply_recipe",
    "apply_thinning_recipes",
    "build_dependency_graph",
    "remove_channels",
    "remove_filters",
    "thinning_recipes",
]
