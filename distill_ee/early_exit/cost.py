"""Compute cost of each exit: the backbone stages a sample runs plus the branches evaluated on the way.

MACs follow ``distill_ee.summaries.module_macs`` (convolutions and linear layers, per sample, dense or
effective), so the final classifier's cost equals the model's own MACs plus the branches it passed.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from ..summaries import module_macs
from ..modules import eval_mode, example_input
from .collaboration import takes_previous
from .multi_exit import MultiExitModel
from .staging import run_stages


def stage_macs(multi: MultiExitModel, model: nn.Module, masks: Optional[Mapping[str, Any]] = None,
               effective: bool = False) -> Tuple[List[float], List[float]]:
    """(MACs of each backbone stage, MACs of each branch), per sample.

    ``model`` is the model ``multi`` was cut from (its layers are the stages' layers); a layer that runs in
    several stages has its MACs split by its number of calls in each.
    """
    x = example_input(model, multi.input_spec, batch=1)
    calls = _stage_calls(multi, model, x)
    key = "effective_macs" if effective else "dense_macs"
    stages = [0.0] * len(multi.stages)
    for record in module_macs(model, x, masks):
        per_stage = calls.get(record.name, {})
        total = sum(per_stage.values())
        for s, n in per_stage.items():
            stages[s] += getattr(record, key) * n / total
    attach_out, _ = _attach_outputs(multi, x)
    where = {id(m): n for n, m in model.named_modules()}
    branches = []
    for branch, out in zip(multi.branches, attach_out):
        sub_masks = _sub_masks(masks, f"{where[id(branch)]}.") if id(branch) in where else None
        if takes_previous(branch):  # counted with the previous exit's logits it reads (their values do not matter)
            branch, sub_masks = _WithPrevious(branch, multi.num_classes), _prefixed(sub_masks, "branch.")
        branches.append(float(sum(getattr(r, key) for r in module_macs(branch, out, sub_masks))))
    return stages, branches


class _WithPrevious(nn.Module):
    """A forward-transfer branch called with zero logits for the previous exit."""

    def __init__(self, branch: nn.Module, num_classes: int):
        super().__init__()
        self.branch = branch
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The branch's logits."""
        return self.branch(x, x.new_zeros(x.shape[0], self.num_classes))


def _prefixed(masks: Optional[Mapping[str, Any]], prefix: str) -> Optional[Dict[str, Any]]:
    return None if masks is None else {prefix + k: v for k, v in masks.items()}


def exit_macs(multi: MultiExitModel, model: nn.Module, masks: Optional[Mapping[str, Any]] = None,
              effective: bool = False) -> List[int]:
    """MACs per sample to leave at each exit, the final classifier last.

    Leaving at exit k costs stages 0..k plus every branch evaluated up to k (branches of exits without a
    threshold are skipped by real inference and not counted); the final classifier pays every stage and
    every evaluated branch.
    """
    stages, branches = stage_macs(multi, model, masks, effective)
    active = multi.computed_exits
    out, paid = [], 0.0
    for k in range(multi.num_exits):
        paid += stages[k] + (branches[k] if active[k] else 0.0)
        out.append(int(round(paid if active[k] else paid + branches[k])))
    out.append(int(round(paid + stages[-1])))
    return out


def _attach_outputs(multi: MultiExitModel, x: torch.Tensor) -> Tuple[List[torch.Tensor], Any]:
    with eval_mode(multi), torch.no_grad():
        return run_stages(list(multi.stages), multi.plan, x)


def _stage_calls(multi: MultiExitModel, model: nn.Module, x: torch.Tensor) -> Dict[str, Dict[int, int]]:
    """For every module of ``model``: how many times each stage calls it."""
    names = {m: n for n, m in model.named_modules()}
    calls: Dict[str, Dict[int, int]] = defaultdict(lambda: defaultdict(int))
    current = [0]

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        calls[names[module]][current[0]] += 1

    handles = [m.register_forward_hook(hook) for m in names]
    plan = multi.plan
    env: List[Any] = [None] * plan.num_slots
    env[0] = x
    try:
        with eval_mode(multi), torch.no_grad():
            multi.begin(x)
            for k, stage in enumerate(multi.stages):
                current[0] = k
                for slot, value in zip(plan.outputs[k], stage(*[env[i] for i in plan.inputs[k]])):
                    env[slot] = value
    finally:
        for h in handles:
            h.remove()
    return {n: dict(v) for n, v in calls.items()}


def _sub_masks(masks: Optional[Mapping[str, Any]], prefix: str) -> Optional[Dict[str, Any]]:
    if masks is None:
        return None
    return {k[len(prefix):]: v for k, v in masks.items() if k.startswith(prefix)}
