"""Cascades of independent models (Big/Little, IDK cascades), taken for real: the big member runs only on what
the small ones hand on."""
from .cascade import Cascade, Member
from .idk import (IDKClassifier, IDKCriterion, cascade_rules, choose_idk_thresholds, fit_idk, idk_features,
                  idk_objective)
from .speed import measure_cascade_speed

__all__ = ["Cascade", "IDKClassifier", "IDKCriterion", "cascade_rules", "Member", "choose_idk_thresholds", "fit_idk",
           "idk_features", "idk_objective", "measure_cascade_speed"]
