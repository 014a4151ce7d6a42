"""Thinning speed: CPU inference of a dense ResNet-20 vs. the same network with pruned filters removed.

Two thinned variants of resnet20_cifar, from the same dense weights:

* ``conv1 50%``: the 50% L1-weakest filters of every BasicBlock's first conv (layerX.Y.conv1) removed;
  their output feeds only bn1 -> relu1 -> conv2, so no residual sum is involved (Distiller's recipe).
* ``conv1 + stages 50%``: additionally half the channels of each residual stage, removed consistently from
  every conv writing into the stage's residual sums (the stem conv or downsample and each block's conv2),
  ranked by their summed L1 magnitude; the readers of the stage (conv1s, downsample, fc) follow.

Timing: synthetic 3x32x32 batches, ``torch.inference_mode``, the models measured in alternation, several
repetitions, median ms per batch; once with contiguous (NCHW) tensors and once with channels_last.
Target: >= 1.5x faster than dense.

    python benchmarks/thinning_speed.py [--batch 256] [--repeats 7] [--threads N] [--fuse-bn]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from tabulate import tabulate
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distill_ee.apputils.models import create_model  # noqa: E402
from distill_ee.pruning import L1RankedStructureParameterPruner, create_masks  # noqa: E402
from distill_ee.summaries import total_macs  # noqa: E402
from distill_ee.thinning import build_dependency_graph, remove_filters  # noqa: E402

ARCH = "resnet20_cifar"
BLOCK_CONV1 = [f"layer{s}.{b}.conv1.weight" for s in (1, 2, 3) for b in range(3)]


def prune_block_conv1(model: nn.Module, fraction: float) -> None:
    """Zero the ``fraction`` L1-weakest filters of every layerX.Y.conv1 (the existing ranked pruner)."""
    masks = create_masks(model)
    pruner = L1RankedStructureParameterPruner("bench", "Filters", fraction, BLOCK_CONV1)
    params = dict(model.named_parameters())
    for name in BLOCK_CONV1:
        pruner.set_param_mask(params[name], name, masks, {"model": model})
        masks[name].apply_mask(params[name])


@torch.no_grad()
def prune_residual_stages(model: nn.Module, fraction: float) -> None:
    """Zero the same ``fraction`` of channels in every conv writing into a residual stage."""
    modules = dict(model.named_modules())
    for group in build_dependency_graph(model).groups:
        if len(group.producers) < 2 or not group.removable:
            continue
        weights = [modules[p].weight for p in group.producers]
        score = sum(w.abs().reshape(w.size(0), -1).mean(dim=1) / w.abs().mean() for w in weights)
        gone = score.argsort()[: int(fraction * group.channels)]
        for w in weights:
            w[gone] = 0


def variants(fraction: float) -> Dict[str, nn.Module]:
    """The dense model and its two thinned versions."""
    torch.manual_seed(0)
    dense = create_model(ARCH, 10, 3)
    conv1 = copy.deepcopy(dense)
    prune_block_conv1(conv1, fraction)
    remove_filters(conv1)
    stages = copy.deepcopy(dense)
    prune_block_conv1(stages, fraction)
    prune_residual_stages(stages, fraction)
    remove_filters(stages)
    return {"dense": dense, f"conv1 {fraction:.0%}": conv1, f"conv1 + stages {fraction:.0%}": stages}


def time_models(models: Dict[str, nn.Module], x: torch.Tensor, repeats: int,
                warmup: int) -> Dict[str, Tuple[float, float]]:
    """Median (wall-clock, process CPU) ms per batch of each model, the models measured in alternation.

    The CPU time of the process is a steadier witness than the wall clock on a machine shared with other jobs.
    """
    wall: Dict[str, List[float]] = {name: [] for name in models}
    cpu: Dict[str, List[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for i in range(warmup + repeats):
            for name, model in models.items():
                start, start_cpu = time.perf_counter(), time.process_time()
                model(x)
                if i >= warmup:
                    wall[name].append(1000.0 * (time.perf_counter() - start))
                    cpu[name].append(1000.0 * (time.process_time() - start_cpu))
    return {name: (statistics.median(wall[name]), statistics.median(cpu[name])) for name in models}


def main(argv: Optional[List[str]] = None) -> int:
    """Build, thin, time and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--fraction", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--fuse-bn", action="store_true",
                        help="fold batch norms into the convs before timing (torch.fx.experimental.optimization)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    models = variants(args.fraction)
    if args.fuse_bn:
        from torch.fx.experimental.optimization import fuse
        models = {name: fuse(model.eval()) for name, model in models.items()}
    example = torch.zeros(1, 3, 32, 32)
    stats = {name: (sum(p.numel() for p in m.parameters()), total_macs(m, example)[0]) for name, m in models.items()}
    x = torch.randn(args.batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    rows = []
    for fmt, memory_format in (("NCHW", torch.contiguous_format), ("channels_last", torch.channels_last)):
        for model in models.values():
            model.eval().to(memory_format=memory_format)
        ms = time_models(models, x.contiguous(memory_format=memory_format), args.repeats, args.warmup)
        for name in models:
            params, macs = stats[name]
            (wall, cpu), (dense_wall, _) = ms[name], ms["dense"]
            rows.append([name, fmt, f"{params:,}", f"{macs / 1e6:.1f}M", f"{wall:.1f}", f"{cpu:.1f}",
                         f"{dense_wall / wall:.2f}x"])
    print(f"{ARCH}, CPU, {torch.get_num_threads()} threads, batch {args.batch}, median of {args.repeats}"
          + (", batch norms folded into convs" if args.fuse_bn else ""))
    print(tabulate(rows, headers=["model", "memory format", "params", "MACs/sample", "ms/batch",
                                  "CPU ms/batch", "speedup vs dense"], tablefmt="github"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
