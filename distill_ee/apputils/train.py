"""A standard classifier training loop with the CompressionScheduler's hooks, and evaluation."""
from __future__ import annotations

import logging
import math
import sys
from typing import Any, Dict, Iterable, Optional, Tuple

import torch
from torch import nn

from ..distributed import all_true, sum_across
from ..errors import DistillEEError
from ..scheduler import CompressionScheduler

log = logging.getLogger("distill_ee")


class NonFiniteError(DistillEEError):
    """Training produced a non-finite loss or non-finite weights."""


def check_finite_weights(model: nn.Module, epoch: int, lr: float) -> None:
    """NonFiniteError unless every parameter of ``model`` is finite."""
    bad = [n for n, p in model.named_parameters() if not bool(torch.isfinite(p.detach()).all())]
    if bad:
        raise NonFiniteError(f"epoch {epoch}: weights are not finite after training ({bad[0]}"
                             f"{f' and {len(bad) - 1} more' if len(bad) > 1 else ''}); nothing is saved from this "
                             f"epoch; lower the learning rate (it is {lr:g})")


def accuracy(output: torch.Tensor, target: torch.Tensor, topk: Tuple[int, ...] = (1, 5)) -> Tuple[int, ...]:
    """Number of samples whose label is among the top-k predictions, for each k.

    Tied logits are ordered by class index (a stable sort), so the top-1 prediction is the arg-max (the first
    of tied classes): the rule of the exit statistics, the calibration and both runtimes. ``topk`` may order
    ties otherwise (int8 outputs tie often), and the same model would then score differently here and there."""
    maxk = min(max(topk), output.shape[1])
    pred = output.sort(dim=1, descending=True, stable=True).indices[:, :maxk]
    hits = pred.eq(target.view(-1, 1))
    return tuple(int(hits[:, :min(k, maxk)].any(dim=1).sum()) for k in topk)


class Progress:
    """A tqdm bar on a terminal; plain periodic log lines otherwise."""

    def __init__(self, iterable: Iterable, total: int, desc: str, print_freq: int):
        self.interactive = sys.stderr.isatty()
        self.total = total
        self.desc = desc
        self.print_freq = max(1, print_freq)
        from tqdm import tqdm  # the app's extra; cli.main has checked it is installed

        self.bar = tqdm(iterable, total=total, desc=desc, leave=False, disable=not self.interactive)

    def __iter__(self):
        return iter(self.bar)

    def update(self, step: int, stats: Dict[str, float]) -> None:
        """Show running statistics after ``step`` (0-based)."""
        text = "  ".join(f"{k} {v:.4f}" for k, v in stats.items())
        if self.interactive:
            self.bar.set_postfix_str(text, refresh=False)
        elif (step + 1) % self.print_freq == 0 or step + 1 == self.total:
            log.info("%s [%d/%d]  %s", self.desc, step + 1, self.total, text)

    def close(self) -> None:
        """Remove the bar."""
        self.bar.close()


def train_one_epoch(model: nn.Module, loader: Any, criterion: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Optional[CompressionScheduler], epoch: int, device: torch.device, *,
                    print_freq: int = 50) -> Dict[str, float]:
    """One epoch of training with the scheduler's hooks; returns loss, top-1 and loss components (over every
    process's batches under torch.distributed, where the processes also agree on stopping for a bad loss)."""
    model.train()
    steps = len(loader)
    totals: Dict[str, float] = {}
    seen = correct = 0
    loss_sum = 0.0
    progress = Progress(loader, steps, f"Epoch {epoch} train", print_freq)
    for i, (inputs, target) in enumerate(progress):
        inputs, target = inputs.to(device, non_blocking=True), target.to(device, non_blocking=True)
        if scheduler:
            scheduler.on_minibatch_begin(epoch, i, steps, optimizer)
        output = model(inputs)
        loss = criterion(output, target)
        if scheduler:
            agg = scheduler.before_backward_pass(epoch, i, steps, loss, optimizer,
                                                 return_loss_components=True, target=target)
            loss = agg.overall_loss
            for comp in agg.loss_components:
                totals[comp.name] = totals.get(comp.name, 0.0) + float(comp.value.detach()) * len(target)
        value = float(loss.detach())
        finite = math.isfinite(value)
        if not all_true(finite):
            what = "another process's training loss is not finite" if finite else \
                f"the training loss is {value} (not finite)"
            raise NonFiniteError(f"epoch {epoch}, step {i}: {what}, so training stops here; lower the learning "
                                 f"rate (it is {optimizer.param_groups[0]['lr']:g})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if scheduler:
            scheduler.before_parameter_optimization(epoch, i, steps, optimizer)
        optimizer.step()
        if scheduler:
            scheduler.on_minibatch_end(epoch, i, steps, optimizer)
        n = len(target)
        seen += n
        loss_sum += value * n
        correct += int((output.detach().argmax(1) == target).sum())
        progress.update(i, {"loss": loss_sum / seen, "top1": 100.0 * correct / seen})
    progress.close()
    names = sorted(totals)
    seen, loss_sum, correct, *sums = sum_across([seen, loss_sum, correct, *(totals[k] for k in names)])
    result = {"loss": loss_sum / max(seen, 1), "top1": 100.0 * correct / max(seen, 1)}
    result.update({k: v / max(seen, 1) for k, v in zip(names, sums)})
    return result


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, criterion: nn.Module, device: torch.device, *,
             desc: str = "valid", print_freq: int = 50, across_ranks: bool = False,
             num_classes: int = 0) -> Dict[str, Any]:
    """Loss, top-1 and top-5 (percent) of ``model`` over ``loader``; with ``across_ranks``, over every
    process's ``loader`` (each holding its share of the batches). With ``num_classes``, also per class (by
    label) the images seen and those whose top-1 prediction is right: ``class_seen`` and ``class_correct``."""
    model.eval()
    seen = c1 = c5 = 0
    loss_sum = 0.0
    class_seen = torch.zeros(num_classes, dtype=torch.int64)
    class_correct = torch.zeros(num_classes, dtype=torch.int64)
    progress = Progress(loader, len(loader), desc, print_freq)
    for i, (inputs, target) in enumerate(progress):
        inputs, target = inputs.to(device, non_blocking=True), target.to(device, non_blocking=True)
        output = model(inputs)
        n = len(target)
        loss_sum += float(criterion(output, target)) * n
        a1, a5 = accuracy(output, target)
        seen, c1, c5 = seen + n, c1 + a1, c5 + a5
        if num_classes:
            _count_classes(output, target, class_seen, class_correct)
        progress.update(i, {"loss": loss_sum / seen, "top1": 100.0 * c1 / seen})
    progress.close()
    if across_ranks:
        seen, loss_sum, c1, c5 = sum_across([seen, loss_sum, c1, c5])
    if across_ranks and num_classes:
        class_seen, class_correct = (torch.tensor(sum_across(t.tolist()), dtype=torch.int64)
                                     for t in (class_seen, class_correct))
    seen = max(seen, 1)
    out: Dict[str, Any] = {"loss": loss_sum / seen, "top1": 100.0 * c1 / seen, "top5": 100.0 * c5 / seen}
    if num_classes:
        out.update(class_seen=class_seen.tolist(), class_correct=class_correct.tolist())
    return out


def _count_classes(output: torch.Tensor, target: torch.Tensor, seen: torch.Tensor, correct: torch.Tensor) -> None:
    """Add one batch to the per-class counts; right means what ``accuracy`` counts as top-1 (the arg-max)."""
    labels = target.detach().cpu().long()
    hits = output.argmax(dim=1).cpu().eq(labels)
    seen += torch.bincount(labels, minlength=len(seen))[:len(seen)]
    correct += torch.bincount(labels[hits], minlength=len(seen))[:len(seen)]
