"""A cascade of independent models, small to big: a sample goes on to the next member only when the current
one is unsure, so the big model runs on the hard samples alone.

Each member but the last has a rule: an exit criterion on its logits (Big/Little: ``max_prob``, ``margin`` or
``entropy`` against a threshold) or an IDK classifier (``idk.IDKCriterion``). A member that has early exits of
its own runs them for real (its ``MultiExitModel``). Real inference (``forward``) hands only the unsure rows to
the next member; ``simulate`` runs every member on every sample (statistics, calibration), and ``decide`` turns
its logits into the same answers. The calibration and statistics of early exits apply unchanged: member ``k``'s
output is "exit ``k``", its cost the members run up to it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..early_exit.criteria import ExitCriterion
from ..early_exit.decisions import decide_exits
from ..early_exit.exits import EarlyExits
from ..early_exit.tradeoff import ExitCosts
from ..errors import ConfigError
from ..modules import eval_mode, unwrap


@dataclass
class Member:
    """One model of the cascade, with its cost per sample (MACs, and seconds once measured)."""

    name: str
    model: nn.Module
    macs: float
    seconds: Optional[float] = None

    def runner(self) -> nn.Module:
        """What runs the member: its multi-exit model (real exits) when it has exits, else the model."""
        exits = EarlyExits.of(self.model)
        return exits.multi_exit_model().eval() if exits is not None else self.model

    @property
    def has_exits(self) -> bool:
        """Whether the member takes exits of its own."""
        return EarlyExits.of(unwrap(self.model)) is not None


class Cascade:
    """Members small to big; ``criteria[k]`` and ``thresholds[k]`` decide when member ``k`` answers."""

    def __init__(self, members: Sequence[Member], criteria: Sequence[ExitCriterion],
                 thresholds: Sequence[Optional[float]]):
        if len(members) < 2:
            raise ConfigError(f"a cascade needs at least two members, got {len(members)}")
        if not (len(criteria) == len(thresholds) == len(members) - 1):
            raise ConfigError(f"a cascade of {len(members)} members needs {len(members) - 1} rules (every member "
                              f"but the last), got {len(criteria)} criteria and {len(thresholds)} thresholds")
        self.members = list(members)
        self.criteria = list(criteria)
        self.thresholds = [None if t is None else float(t) for t in thresholds]
        self._runners = [m.runner() for m in self.members]
        self._models = nn.ModuleList([m.model for m in self.members])  # to switch their modes together

    @property
    def names(self) -> List[str]:
        """Member names, small to big."""
        return [m.name for m in self.members]

    def costs(self, unit: str = "macs") -> ExitCosts:
        """The cost of answering at each member (every member before it ran too), the last member alone as
        100%: the early-exit calibration's cost model. ``unit``: ``macs`` or measured ``seconds``."""
        per = [float(m.macs if unit == "macs" else (m.seconds or 0.0)) for m in self.members]
        if unit == "seconds" and any(m.seconds is None for m in self.members):
            raise ConfigError("the members' times have not been measured (measure_members)")
        return ExitCosts([sum(per[:k + 1]) for k in range(len(per))], per[-1], None)

    # ----------------------------------------------------------------- inference
    def run_member(self, k: int, x: torch.Tensor) -> torch.Tensor:
        """Member ``k``'s logits for ``x`` (with its own exits, taken for real, when it has any)."""
        out = self._runners[k](x)
        return out[0] if isinstance(out, tuple) else out

    def simulate(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Every member's logits for every sample, small to big."""
        with eval_mode(self._models), torch.inference_mode():
            return [self.run_member(k, x) for k in range(len(self.members))]

    def simulate_loader(self, loader: Any) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """``simulate`` over every batch of ``loader``: each member's logits for every sample, and the labels."""
        parts, ys = [], []
        for x, y in loader:
            parts.append(self.simulate(x))
            ys.append(y)
        return [torch.cat([p[k] for p in parts]) for k in range(len(self.members))], torch.cat(ys)

    def decide(self, logits: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """(chosen logits, member index) per sample from ``simulate``'s output."""
        return decide_exits(list(logits), self.criteria, self.thresholds)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Real cascade inference: (logits of the member that answered, its index); each member runs only on the
        samples every member before it handed on."""
        n = x.shape[0]
        last = len(self.members) - 1
        with eval_mode(self._models), torch.inference_mode():
            out: Optional[torch.Tensor] = None
            index = torch.full((n,), last, dtype=torch.long)
            alive = torch.arange(n)
            state: Dict[str, Any] = {}
            for k in range(last):
                if self.thresholds[k] is None:  # never answers: not run at all
                    continue
                logits = self.run_member(k, x)
                answer = self.criteria[k].exit_mask(logits, self.thresholds[k], state)
                if out is None:
                    out = logits.new_empty((n, logits.shape[1]))
                done = answer.nonzero().squeeze(1)
                out[alive[done]] = logits[done]
                index[alive[done]] = k
                keep = (~answer).nonzero().squeeze(1)
                alive, x = alive[keep], x.index_select(0, keep)
                if alive.numel() == 0:
                    return out, index
            final = self.run_member(last, x)
            if out is None:
                return final, index
            out[alive] = final
            return out, index

    __call__ = forward
