"""Differentiable early exit (Scardapane et al., 2020): the soft-conditional output and its cost.

With gates g_b in (0, 1) on the early exits and the final classifier's gate fixed to 1::

    f^_b = g_b * f_b + (1 - g_b) * f^_{b+1}        (f_b: softmax of exit b; f^_{B+1} = f_final)
    y^_b = g_b * v_b + (1 - g_b) * y^_{b+1}        (v_b: cost of leaving at b; y^_{B+1} = v_final)

Training minimises the cross-entropy of f^_1 plus lambda * mean(y^_1). v_b is the MACs of leaving at exit b
(the backbone up to it and every branch on the way) over the backbone's MACs, from the project's own counter.
Inference takes hard gates (leave at the first exit with g_b above its threshold, ``criterion: gate``) or the
soft ensemble (every exit computed, ``soft_ensemble``).
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F

#: probabilities are clamped here before the log of the cross-entropy
EPS = 1e-12


def soft_conditional(probs: Sequence[torch.Tensor], gates: Sequence[torch.Tensor],
                     costs: Sequence[float]) -> Tuple[torch.Tensor, torch.Tensor]:
    """(f^_1, y^_1): the soft-conditional output (N, C) and expected cost (N,) of the outputs' probabilities
    ``probs`` (final classifier last), the early exits' ``gates`` (N,) and each output's cost."""
    if not (len(probs) == len(costs) == len(gates) + 1):
        raise ValueError(f"need one gate per early exit and one probability and cost per output, got "
                         f"{len(gates)} gates, {len(probs)} outputs and {len(costs)} costs")
    mixture = probs[-1]
    cost = torch.full_like(gates[0] if gates else probs[-1][:, 0], float(costs[-1]))
    for b in reversed(range(len(gates))):
        g = gates[b]
        mixture = g.unsqueeze(1) * probs[b] + (1 - g).unsqueeze(1) * mixture
        cost = g * float(costs[b]) + (1 - g) * cost
    return mixture, cost


def soft_conditional_loss(logits: Sequence[torch.Tensor], gates: Sequence[torch.Tensor], costs: Sequence[float],
                          target: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(cross-entropy of the soft-conditional output, mean expected cost) for the outputs' ``logits``."""
    mixture, cost = soft_conditional([torch.softmax(l, dim=1) for l in logits], gates, costs)
    return F.nll_loss(torch.log(mixture.clamp_min(EPS)), target), cost.mean()


def soft_ensemble(exit_logits: Sequence[torch.Tensor], deciders: Sequence[torch.nn.Module]) -> torch.Tensor:
    """The soft ensemble of every output: f^_1 as probabilities (N, C) from the logits of every exit (final
    classifier last) and the early exits' deciders."""
    gates: List[torch.Tensor] = [d(l) for d, l in zip(deciders, exit_logits)]
    mixture, _ = soft_conditional([torch.softmax(l, dim=1) for l in exit_logits], gates,
                                  [0.0] * len(exit_logits))
    return mixture
