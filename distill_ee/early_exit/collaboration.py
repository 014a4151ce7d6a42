"""Forward knowledge transfer between exits: IMTA's inline sub-network collaboration (Li et al., 2019, 3.2).

With ``forward_transfer: true`` on an early-exit instance, every exit after the first reads the previous
exit's logits as well as its own features: its branch's last linear layer becomes

    logits_k = W_k [ body_k(x_k) ; relu(T_k logits_{k-1}) ]

where ``body_k`` is the branch without its last layer and ``T_k`` maps the previous exit's logits to the
width of ``body_k``'s output (the paper's "ISC module"; it adds a batch norm, left out here because it cannot
take a batch of one sample, which a training loop's last batch or real early exit at batch 1 may be). The
previous logits are not detached: the later exit's loss also trains the earlier one, as in the paper. The final
classifier is the model's own and is left as it is.

Every caller of a branch goes through ``run_branch(branch, x, previous)``: training hooks, simulated and real
early exit (which keeps the previous exit's logits for the samples still running), costs and timings.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..errors import ScheduleError


class CollaborativeBranch(nn.Module):
    """An exit branch whose last linear layer also reads the previous exit's logits (through ``transfer``)."""

    #: tells callers to pass the previous exit's logits
    takes_previous = True

    def __init__(self, branch: nn.Module, num_classes: int, exit_name: str = ""):
        super().__init__()
        layers = list(branch.children()) if isinstance(branch, nn.Sequential) else []
        last = layers[-1] if layers else None
        if not isinstance(last, nn.Linear) or last.out_features != num_classes:
            raise ScheduleError("forward_transfer needs each branch to end with its linear layer to the classes",
                                path=f"exits.{exit_name}.branch")
        width = last.in_features
        self.body = nn.Sequential(*layers[:-1])
        self.transfer = nn.Sequential(nn.Linear(num_classes, width), nn.ReLU())
        self.head = nn.Linear(2 * width, num_classes, bias=last.bias is not None)
        self.to(last.weight.device)

    def forward(self, x: torch.Tensor, previous: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits from the features ``x`` and the previous exit's logits (zeros when not given)."""
        features = self.body(x)
        if previous is None:
            previous = features.new_zeros(features.shape[0], self.transfer[0].in_features)
        return self.head(torch.cat([features, self.transfer(previous)], dim=1))


def takes_previous(branch: nn.Module) -> bool:
    """True for a branch that reads the previous exit's logits."""
    return bool(getattr(branch, "takes_previous", False))


def run_branch(branch: nn.Module, x: torch.Tensor, previous: Optional[torch.Tensor]) -> torch.Tensor:
    """The branch's logits for ``x`` (and the previous exit's logits when the branch reads them)."""
    return branch(x, previous) if takes_previous(branch) else branch(x)
