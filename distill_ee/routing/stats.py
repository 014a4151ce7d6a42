"""Routing statistics and wall-clock measurement: per-block execution rates, expected MACs, speedup, oracle bound.

The oracle bound of routed inference is what an implementation that skipped blocks at no cost would spend:
``T_rest + sum_i r_i * T_i + T_decisions``, with T_rest the measured time of the network with every routed
block passed over, T_i the measured time of block i alone on its inputs, r_i its execution rate, and
T_decisions the measured time of the gates or of the policy network, all at the same batch size. Real routing
pays on top of it for deciding, and for selecting and copying rows or grouping the batch.
"""
from __future__ import annotations

import statistics
from typing import Any, Callable, Dict, Iterable, List, Sequence, Tuple

import torch
from torch import nn

from ..dynamic import static_compute
from ..errors import DistillEEError
from ..timing import interleaved_rounds
from ..modules import eval_mode, model_device, unwrap
from ..summaries import dense_macs
from ..temporary_hooks import removing
from .blockdrop import BlockDropSet
from .gates import RNNGate
from .router import RoutingSet, routing_of
from .skipnet import SkipGateSet


def _routing(model: nn.Module) -> RoutingSet:
    found = routing_of(unwrap(model))
    if found is None:
        raise DistillEEError(f"{type(unwrap(model)).__name__} has no routing attached")
    return found


def routing_statistics(model: nn.Module, batches: Iterable[Tuple[torch.Tensor, torch.Tensor]]) -> Dict[str, Any]:
    """Top-1, per-block execution rates and expected MACs per sample of ``model`` (real routing, eval mode)."""
    routing = _routing(model)
    routing.measure(unwrap(model), routing.input_shape)
    device = model_device(model)
    correct = total = 0
    routing.reset_counts()
    routing.counting = True
    try:
        with eval_mode(model), torch.no_grad():
            for x, y in batches:
                out = model(x.to(device))
                correct += int((out.argmax(dim=1) == y.to(device)).sum())
                total += int(x.shape[0])
    finally:
        routing.counting = False
    if not total:
        raise DistillEEError("routing statistics need at least one sample")
    rates = [e / total for e in routing.executed]
    return {"top1": 100.0 * correct / total, "samples": total, **expected_costs(routing, rates),
            "blocks": [{"name": n, "macs": m, "share_pct": 100.0 * c, "executed_pct": 100.0 * r}
                       for n, m, c, r in zip(routing.block_names, routing.block_macs, routing.costs, rates)]}


def expected_costs(routing: RoutingSet, rates: Sequence[float], reached: Sequence[float] = ()) -> Dict[str, Any]:
    """Expected MACs per sample for block execution rates ``rates`` (and the share of samples reaching each
    gate, default all): the backbone outside the blocks, the executed blocks, and the decisions."""
    reached = list(reached) or [1.0] * routing.num_blocks
    decisions = routing.decider_macs()
    outside = routing.backbone_macs - sum(routing.block_macs)
    blocks = sum(r * m for r, m in zip(rates, routing.block_macs))
    deciding = sum(f * m for f, m in zip(reached, decisions[:-1])) + decisions[-1]
    expected = outside + blocks + deciding
    return {"macs_backbone": routing.backbone_macs, "macs_expected": expected,
            "macs_decisions": deciding, "macs_pct": 100.0 * expected / max(routing.backbone_macs, 1),
            "block_macs_executed_pct": 100.0 * blocks / max(sum(routing.block_macs), 1),
            "executed_blocks_pct": 100.0 * sum(rates) / max(len(rates), 1)}


def executed_macs(run: Callable[[torch.Tensor], Any], root: nn.Module, inputs: Iterable[torch.Tensor]) -> float:
    """MACs per sample that ``run`` really executes on ``inputs``, counted call by call: every convolution and
    linear layer of ``root`` adds its per-sample MACs times the rows it was called on (skipped blocks, samples
    gone at an exit and the decisions all show); eval mode, no gradients."""
    total = [0.0]

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        if args and isinstance(args[0], torch.Tensor) and isinstance(output, torch.Tensor):
            rows = args[0].shape[0] if args[0].dim() > 1 else 1
            total[0] += dense_macs(module, args[0], output) * rows

    handles = [m.register_forward_hook(hook) for m in root.modules()
               if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    n = 0
    try:
        with eval_mode(root), torch.no_grad():
            for x in inputs:
                run(x)
                n += int(x.shape[0])
    finally:
        for h in handles:
            h.remove()
    return total[0] / max(n, 1)


# --------------------------------------------------------------------------- wall clock
def _block_inputs(model: nn.Module, routing: RoutingSet, batches: Sequence[torch.Tensor]) -> List[List[torch.Tensor]]:
    """Each routed block's input for each batch, every block running."""
    inner = unwrap(model)
    got: List[List[torch.Tensor]] = [[] for _ in routing.block_names]
    handles = [inner.get_submodule(b).register_forward_pre_hook(
        lambda m, args, k=k: got[k].append(args[0])) for k, b in enumerate(routing.block_names)]
    with removing(handles), static_compute(inner), torch.inference_mode():
        for b in batches:
            model(b)
    return got


def _decisions(routing: RoutingSet, batches: Sequence[torch.Tensor],
               inputs: List[List[torch.Tensor]]) -> Callable[[], Any]:
    """A function computing every decision of the batches on every row (the cost an oracle still pays)."""
    if isinstance(routing, SkipGateSet):
        gates = routing.gates
        if isinstance(gates, RNNGate):
            def run_rnn() -> None:
                for i in range(len(batches)):
                    gates.reset()
                    for k in range(routing.num_blocks):
                        gates(k, inputs[k][i])
            return run_rnn
        return lambda: [gates[k](inputs[k][i]) for i in range(len(batches)) for k in range(routing.num_blocks)]
    return lambda: [routing.policy_probabilities(b) for b in batches]


def _with_strategy(routing: BlockDropSet, strategy: str, fn: Callable[[], Any]) -> Any:
    """``fn()`` with BlockDrop's batch strategy set to ``strategy``."""
    kept, routing.batch_strategy = routing.batch_strategy, strategy
    try:
        return fn()
    finally:
        routing.batch_strategy = kept


def _oracle(rounds: Dict[str, List[float]], r: int, rates: Sequence[float]) -> float:
    """The oracle bound's seconds in round ``r``: the network with every routed block passed over (timed as it
    is, not as the backbone minus the blocks), each block's time times its execution rate, and the decisions."""
    blocks = [rounds[f"block{k}"][r] for k in range(len(rates))]
    return rounds["rest"][r] + sum(q * t for q, t in zip(rates, blocks)) + rounds["decisions"][r]


def measure_routing_speed(model: nn.Module, inputs: torch.Tensor, batch_size: int,
                          repeats: int = 5) -> Dict[str, Any]:
    """Per-sample seconds of the backbone (every block) and of real routing at one batch size, timed in
    interleaved rounds (each keeps its best round), and ``real_vs_oracle``: the median over the rounds of the
    oracle bound's time over routing's time in the same round (``oracle`` is that ratio times routing's best).
    ``spread`` is how much slower than its best the median round of the backbone or of routing was."""
    routing = _routing(model)
    inner = unwrap(model)
    batches = list(torch.split(inputs, batch_size))
    n = int(inputs.shape[0])
    with eval_mode(model):
        block_in = _block_inputs(model, routing, batches)
        blocks = [inner.get_submodule(b) for b in routing.block_names]

        def backbone() -> None:
            with static_compute(inner):
                for b in batches:
                    model(b)

        def rest() -> None:
            routing.skip_all = True
            try:
                for b in batches:
                    model(b)
            finally:
                routing.skip_all = False

        candidates: Dict[str, Callable[[], Any]] = {
            "backbone": backbone, "routed": lambda: [model(b) for b in batches], "rest": rest,
            "decisions": _decisions(routing, batches, block_in)}
        if isinstance(routing, BlockDropSet):  # BlockDrop's other batch strategy, timed beside the configured one
            other = "rows" if routing.batch_strategy == "patterns" else "patterns"
            candidates[other] = lambda: _with_strategy(routing, other, lambda: [model(b) for b in batches])
        for k, block in enumerate(blocks):
            candidates[f"block{k}"] = (lambda k=k, block=block: [type(block).forward(block, t) for t in block_in[k]])
        routing.reset_counts()
        routing.counting = True
        try:
            with torch.inference_mode():
                for b in batches:
                    model(b)
        finally:
            routing.counting = False
        rates = [e / n for e in routing.executed]
        rounds = interleaved_rounds(candidates, repeats, context=torch.inference_mode)
    best = {name: min(times) / n for name, times in rounds.items()}
    block_t = [best[f"block{k}"] for k in range(routing.num_blocks)]
    # The bound is computed within each round (all its pieces timed back to back), and the median of the rounds'
    # ratios is reported: a shift of the machine's speed between rounds does not enter it.
    ratios = [_oracle(rounds, r, rates) / rounds["routed"][r] for r in range(len(rounds["routed"]))]
    spread = max(statistics.median(rounds[name]) / min(rounds[name]) - 1.0 for name in ("backbone", "routed"))
    real_vs_oracle = statistics.median(ratios)
    out = {"batch_size": batch_size, "samples": n, "backbone": best["backbone"], "routed": best["routed"],
           "oracle": real_vs_oracle * best["routed"], "decisions": best["decisions"], "block_times": block_t,
           "rates": rates, "speedup": best["backbone"] / best["routed"], "real_vs_oracle": real_vs_oracle,
           "spread": spread}
    if isinstance(routing, BlockDropSet):  # seconds per sample of each batch strategy
        out["strategies"] = {routing.batch_strategy: best["routed"], other: best[other]}
    return out
