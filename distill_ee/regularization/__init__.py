"""Regularizers (registered in ``distill_ee.registry.REGULARIZERS`` under Distiller's class names)."""
from .group_lasso import GroupLassoRegularizer, GroupVarianceRegularizer, group_lasso_penalty, group_threshold_mask
from .l1 import L1Regularizer
from .regularizer import EPSILON, Regularizer

__all__ = [
    "EPSILON",
    "GroupLassoRegularizer",
    "GroupVarianceRegularizer",
    "L1Regularizer",
    "Regularizer",
    "group_lasso_penalty",
    "group_threshold_mask",
]
