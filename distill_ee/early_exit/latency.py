"""The measured latency profile of a MultiExitModel in eager PyTorch (ONNX Runtime's: ``deploy.profile``).

Each stage is timed on its own inputs (computed once), each branch on its attach output, the backbone on the
same batches; ``LatencyProfile.costs`` then prices the ways out of the model in seconds for the ``latency=``
calibration target.
"""
from __future__ import annotations

from typing import Any, List

import torch
from torch import nn

from ..deploy.profile import LatencyProfile
from ..timing import median_time
from ..modules import eval_mode
from .collaboration import run_branch
from .multi_exit import MultiExitModel
from .tradeoff import ExitCosts


def profile_torch(multi: MultiExitModel, model: nn.Module, inputs: torch.Tensor, batch_size: int,
                  rounds: int = 5) -> LatencyProfile:
    """Seconds per sample of every stage, branch and the backbone, in batches of ``batch_size``."""
    batches = list(torch.split(inputs, batch_size))
    n = inputs.shape[0]
    plan = multi.plan
    calls = [stage.forward for stage in multi.stages]
    with eval_mode(multi), eval_mode(model), torch.inference_mode():
        before: List[List[List[Any]]] = []
        done: List[List[Any]] = []
        for b in batches:
            env: List[Any] = [None] * plan.num_slots
            env[0] = b
            multi.begin(b)
            snapshots = []
            for k, call in enumerate(calls):
                snapshots.append(list(env))
                for slot, value in zip(plan.outputs[k], call(*[env[i] for i in plan.inputs[k]])):
                    env[slot] = value
            before.append(snapshots)
            done.append(env)
        stages = [median_time(lambda k=k: [calls[k](*[e[k][i] for i in plan.inputs[k]]) for e in before], rounds) / n
                  for k in range(len(calls))]
        branches = [median_time(lambda k=k: [run_branch(multi.branches[k], e[plan.attach[k]], None) for e in done],
                              rounds) / n for k in range(multi.num_exits)]
        backbone = median_time(lambda: [model(b) for b in batches], rounds) / n
    return LatencyProfile("pytorch", batch_size, stages, branches, backbone)


def latency_costs(profile: LatencyProfile) -> ExitCosts:
    """The calibration's cost model in seconds per sample (the backbone's measured time is 100%)."""
    costs = profile.costs()
    return ExitCosts(costs["per_exit"], costs["full"], costs["branches"])
