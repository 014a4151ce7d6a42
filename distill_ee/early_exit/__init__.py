"""Early exit: side-branch classifiers attached to any model, trained jointly, exited from for real.

* ``spec``        the ``early_exits`` schedule section, validated into dataclasses
* ``branch``      branch layer types (BRANCH_LAYERS) and the branch builder with shape inference
* ``criteria``    exit criteria (EXIT_CRITERIA): entropy, max_prob, margin, patience
* ``attach``      branches registered on a live model, forward hooks for joint training
* ``staging``     the backbone cut into stages at the attach points (torch.fx, or a child list)
* ``multi_exit``  MultiExitModel: real early exit (shrinking batch) and simulated inference
* ``decisions``   simulated exit decisions from every exit's logits
* ``stats``, ``cost``  per-exit statistics and MACs
* ``export``      TorchScript export and the driver that runs it
* ``calibrate``, ``tradeoff``, ``temperature``, ``timing``  threshold calibration on a validation split and
  speed measurements (imported on their own)

The scheduled policy is ``distill_ee.policies.early_exit.EarlyExit`` (also reachable here, with
``rebuild_exits``, as ``distill_ee.early_exit.EarlyExit``).
"""
from __future__ import annotations

from typing import Any

from .attach import EXITS_ATTR, ExitAttachment, ExitSet, attach_exits
from .branch import LayerSpec, build_branch
from .cost import exit_macs, stage_macs
from .criteria import ExitCriterion, criteria_list, get_criterion
from .decisions import decide_exits, exit_counts
from .export import export_torchscript, load_exported
from .multi_exit import MultiExitModel
from .spec import EarlyExitSpec, ExitSpec, LossWeight, parse_early_exit_config
from .staging import StagePlan, split_model
from .stats import collect_exit_logits, exit_statistics, expected_macs, overall_top1

__all__ = [
    "EXITS_ATTR", "EarlyExitSpec", "ExitAttachment", "ExitCriterion", "ExitSet", "ExitSpec", "LayerSpec",
    "LossWeight", "MultiExitModel", "StagePlan", "attach_exits", "build_branch", "collect_exit_logits",
    "criteria_list", "decide_exits", "exit_counts", "exit_macs", "exit_statistics", "expected_macs",
    "export_torchscript", "get_criterion", "load_exported", "overall_top1", "parse_early_exit_config",
    "split_model", "stage_macs", "EarlyExit", "rebuild_exits",
]


def __getattr__(name: str) -> Any:
    """``EarlyExit`` and ``rebuild_exits`` live with the policies; imported on first use (no import cycle)."""
    if name in ("EarlyExit", "rebuild_exits"):
        from ..policies import early_exit as policy_module
        return getattr(policy_module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
