"""Pruners (registered in ``distill_ee.registry.PRUNERS`` under Distiller's class names) and masks."""
from .activation import (
    ActivationAPoZRankedFilterPruner,
    ActivationAPoZRankedFilterPruner_AGP,
    ActivationRankedFilterPruner,
)
from .agp import (
    AutomatedGradualPruner,
    AutomatedGradualPrunerBase,
    BernoulliFilterPruner_AGP,
    L1RankedStructureParameterPruner_AGP,
    L2RankedStructureParameterPruner_AGP,
    StructuredAGP,
    agp_target_sparsity,
)
from .level import SparsityLevelParameterPruner, level_mask
from .magnitude import MagnitudeParameterPruner, threshold_mask
from .masks import ParameterMasker, apply_masks, create_masks, sparsity
from .pruner import Pruner
from .random import BernoulliFilterPruner, RandomLevelStructureParameterPruner
from .ranked import (
    L1RankedStructureParameterPruner,
    L2RankedStructureParameterPruner,
    LpRankedStructureParameterPruner,
    RankedStructurePruner,
)
from .sensitivity import SensitivityPruner
from .splicing import SplicingPruner

__all__ = [
    "ActivationAPoZRankedFilterPruner",
    "ActivationAPoZRankedFilterPruner_AGP",
    "ActivationRankedFilterPruner",
    "AutomatedGradualPruner",
    "AutomatedGradualPrunerBase",
    "BernoulliFilterPruner",
    "BernoulliFilterPruner_AGP",
    "L1RankedStructureParameterPruner",
    "L1RankedStructureParameterPruner_AGP",
    "L2RankedStructureParameterPruner",
    "L2RankedStructureParameterPruner_AGP",
    "LpRankedStructureParameterPruner",
    "MagnitudeParameterPruner",
    "ParameterMasker",
    "Pruner",
    "RandomLevelStructureParameterPruner",
    "RankedStructurePruner",
    "SensitivityPruner",
    "SparsityLevelParameterPruner",
    "SplicingPruner",
    "StructuredAGP",
    "agp_target_sparsity",
    "apply_masks",
    "create_masks",
    "level_mask",
    "sparsity",
    "threshold_mask",
]
