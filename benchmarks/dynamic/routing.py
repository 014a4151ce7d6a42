"""Rows of a routed ResNet (SkipNet gates, BlockDrop's policy network): accuracy, expected MACs, speed, and
whether the routing is per sample or a fixed sub-network.

A test image's *pattern* is the set of routed blocks it runs. It is read off the decisions themselves, in the
same pass over the test split that ``routing_statistics`` counts the execution rates in: the gates' logits
(SkipNet: every row of the batch reaches every gate, in order) or the policy network's (BlockDrop: once per
input), decided as the routing set decides (keep probability > 0.5; the blocks the curriculum forces are
kept). The patterns' column sums are checked against the set's own execution counts. A fixed sub-network
shows as one pattern and 0 bits of entropy; per-sample routing as many patterns and a spread distribution.
"""
from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn

from . import SPEED_RUNS, load_model, load_splits

if TYPE_CHECKING:
    from distill_ee.routing import RoutingSet

def load_trained(arch: str, checkpoint: Path, data: Optional[str], dataset: str) -> Tuple[nn.Module, Any]:
    """The checkpoint's model in eval mode and the dataset's splits (the trainings' validation share)."""
    splits = load_splits(data, dataset)
    return load_model(arch, checkpoint, splits.info), splits


def routing_rows(arch: str, checkpoint: Path, data: Optional[str], timing: bool, method: str, *,
                 dataset: str = "fashion_mnist") -> List[Tuple[str, Dict[str, Any]]]:
    """One row: the routed model's test top-1, expected MACs (decisions included), its routing patterns and,
    when ``timing``, real routing against every block running at batch 1 and 256."""
    from distill_ee.apputils.datasets import make_loaders
    from distill_ee.routing import routing_of
    from distill_ee.routing.stats import routing_statistics

    model, splits = load_trained(arch, checkpoint, data, dataset)
    routing = routing_of(model)
    if routing is None:
        raise ValueError(f"{checkpoint}: the model has no routing (SkipNet or BlockDrop) attached")
    test = make_loaders(splits, 256)[2]
    with recorded_decisions(routing) as columns:
        stats = routing_statistics(model, test)
    patterns = stacked_patterns(columns, routing)
    figures: Dict[str, Any] = {
        "top1": stats["top1"], "test_images": stats["samples"], "macs_pct": stats["macs_pct"],
        "executed_blocks_pct": stats["executed_blocks_pct"],
        "block_macs_executed_pct": stats["block_macs_executed_pct"],
        "macs_decisions_pct": 100.0 * stats["macs_decisions"] / max(stats["macs_backbone"], 1),
        "blocks": stats["blocks"], **pattern_figures(patterns)}
    figures["note"] = note(figures)
    if timing:
        figures["speed"] = routing_speed(model, torch.cat([x for x, _ in test]))
    return [(f"{method}, {routing.num_blocks} routed blocks", figures)]


@contextlib.contextmanager
def recorded_decisions(routing: "RoutingSet") -> Iterator[List[List[torch.Tensor]]]:
    """While open, each routed block's keep decisions (bool, one per row, in batch order) appended to its list,
    from the logits of the gates (SkipNet) or of the policy network (BlockDrop)."""
    from distill_ee.routing import BlockDropSet
    from distill_ee.routing.gates import RNNGate

    columns: List[List[torch.Tensor]] = [[] for _ in range(routing.num_blocks)]

    def keep(k: int, logits: torch.Tensor) -> None:
        decided = torch.sigmoid(logits) > 0.5  # the routing set's greedy decision on the same logits
        columns[k].append((torch.ones_like(decided) if routing.forced(k) else decided).cpu())

    def keep_all(module: nn.Module, args: Any, logits: torch.Tensor) -> None:
        """The policy network's (N, K) logits, a decision per block (None returned: a value would replace them)."""
        for k in range(routing.num_blocks):
            keep(k, logits[:, k])

    if isinstance(routing, BlockDropSet):
        handles = [routing.policy_net.register_forward_hook(keep_all)]
    elif isinstance(routing.gates, RNNGate):
        handles = [routing.gates.register_forward_hook(lambda m, args, out: keep(int(args[0]), out))]
    else:
        handles = [gate.register_forward_hook(lambda m, args, out, k=k: keep(k, out))
                   for k, gate in enumerate(routing.gates)]
    try:
        yield columns
    finally:
        for h in handles:
            h.remove()


def stacked_patterns(columns: List[List[torch.Tensor]], routing: "RoutingSet") -> torch.Tensor:
    """The (samples, blocks) 0/1 patterns of recorded decisions, checked against the set's execution counts."""
    if not all(columns):
        raise ValueError("no routing decision was recorded: the checkpoint's routing is not active")
    patterns = torch.stack([torch.cat(c).cpu() for c in columns], dim=1)
    counted = patterns.sum(dim=0).tolist()
    if counted != list(routing.executed):
        raise RuntimeError(f"recorded decisions run the blocks {counted} times, the routing set counted "
                           f"{list(routing.executed)}")
    return patterns


def pattern_figures(patterns: torch.Tensor) -> Dict[str, Any]:
    """How spread the per-sample patterns are: distinct ones (count, share of the samples), entropy in bits,
    and the most common pattern (blocks in depth order, 1 = run) with its share."""
    unique, counts = torch.unique(patterns.to(torch.uint8), dim=0, return_counts=True)
    share = counts.double() / patterns.shape[0]
    top = int(counts.argmax())
    return {"patterns_distinct": int(counts.numel()),
            "patterns_distinct_pct": 100.0 * counts.numel() / patterns.shape[0],
            "pattern_entropy_bits": max(0.0, float(-(share * share.log2()).sum())),
            "pattern_entropy_max_bits": math.log2(min(2 ** patterns.shape[1], patterns.shape[0])),
            "top_pattern": "".join(str(int(b)) for b in unique[top]), "top_pattern_pct": 100.0 * float(share[top])}


def note(f: Dict[str, Any]) -> str:
    """The notes column: blocks run and the patterns' spread."""
    return (f"blocks run {f['executed_blocks_pct']:.0f}%; patterns: {f['patterns_distinct']} distinct "
            f"({f['patterns_distinct_pct']:.2f}%), entropy {f['pattern_entropy_bits']:.1f} bits, "
            f"top pattern {f['top_pattern_pct']:.0f}%")


def routing_speed(model: nn.Module, inputs: torch.Tensor) -> Dict[str, Any]:
    """Real routing against the same network with every block running, with the oracle bound, at batch 256
    and batch 1 (the contract's ``speed``)."""
    from distill_ee.routing.stats import measure_routing_speed

    out: Dict[str, Any] = {}
    for batch, images, repeats in SPEED_RUNS:
        r = measure_routing_speed(model, inputs[:images], batch, repeats=repeats)
        out[str(batch)] = {"backbone": r["backbone"], "real": r["routed"], "oracle": r["oracle"],
                           "spread": r["spread"], "real_vs_oracle": r["real_vs_oracle"], "decisions": r["decisions"],
                           **({"strategies": r["strategies"]} if "strategies" in r else {})}
    return out
