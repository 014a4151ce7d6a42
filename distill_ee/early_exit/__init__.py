"""Early exit: side-branch classifiers attached to any model, trained jointly, exited from for real.

* ``spec``        the ``early_exits`` schedule section, validated into dataclasses
* ``branch``      branch layer types (BRANCH_LAYERS) and the branch builder with shape inference
* ``criteria``    exit criteria (EXIT_CRITERIA): entropy, max_prob, margin, patience
* ``deciders``    learned decisions (gate, learned): a decider per exit over its logits; ``gates``: the
  soft-conditional output and cost of differentiable exits; ``learned_policy``: deciders trained after the
  network on the validation split
* ``exit_set``    ExitSet: the module holding a model's branches, attach points, criteria and thresholds
* ``attach``      attaching an ExitSet to a live model (with its structure step); ``hooks``: training hooks
* ``exits``       EarlyExits: the exits of a model as a schedule component and for inference
* ``staging``     the backbone cut into stages at the attach points (torch.fx, or a child list)
* ``multi_exit``  MultiExitModel: real early exit (shrinking batch) and simulated inference
* ``decisions``   simulated exit decisions from every exit's logits
* ``stats``, ``cost``  per-exit statistics and MACs
* ``export``      TorchScript export and the driver that runs it
* ``calibrate``, ``tradeoff``, ``temperature``, ``risk``  threshold calibration on a validation split, with a
  statistical guarantee when asked (Learn-then-Test)

The training policy is ``distill_ee.policies.early_exit.EarlyExitPolicy``.
"""
from __future__ import annotations

from .attach import attach_exits, detach_exits
from .branch import LayerSpec, build_branch
from .cost import exit_macs, stage_macs
from .criteria import ExitCriterion, criteria_list, get_criterion
from .decisions import decide_exits, exit_counts
from .exit_set import EXITS_ATTR, ExitSet, exits_of
from .exits import EarlyExits
from .export import export_torchscript, load_exported
from .hooks import ExitHooks
from .multi_exit import MultiExitModel
from .spec import EarlyExitSpec, ExitSpec, LossWeight, parse_early_exit_config
from .staging import StagePlan, split_model
from .stats import collect_exit_logits, exit_statistics, expected_macs, overall_top1

__all__ = [
    "EXITS_ATTR", "EarlyExitSpec", "EarlyExits", "ExitCriterion", "ExitHooks", "ExitSet", "ExitSpec",
    "LayerSpec", "LossWeight", "MultiExitModel", "StagePlan", "attach_exits",
    "build_branch", "collect_exit_logits", "criteria_list", "decide_exits", "detach_exits", "exit_counts",
    "exit_macs", "exit_statistics", "exits_of", "expected_macs", "export_torchscript", "get_criterion",
    "load_exported", "overall_top1", "parse_early_exit_config", "split_model", "stage_macs",
]
