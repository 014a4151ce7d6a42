"""What training on several processes costs here: 1 vs 2 gloo processes, mask sharing, DDP rebuilds.

lenet_mnist under the README's default schedule (an exit trained jointly, AGP active), a global batch of 128
on synthetic MNIST-shaped data. One launch of two processes runs every candidate in interleaved rounds:

* one process alone (rank 0 with the batch of 128 on 2 threads, and on 1 thread; rank 1 waits),
* two processes with DistributedDataParallel (64 each, 1 thread each), as ``distributed.wrap`` builds it,
* the same with ``find_unused_parameters=True``, the other way to let exits idle without crashing DDP.

Each candidate keeps its best round; the spread (median / best) says how noisy the machine was. Inside the DDP
rounds the time the scheduler spends agreeing on changed masks is measured directly, as is a full share of
every mask and weight (what follows a pruning step) and a DDP rebuild (after thinning or when exits start or
stop). A back-of-envelope for ResNet-18 on 8 GPUs closes the report.

    python benchmarks/ddp_overhead.py [--rounds 5] [--steps 20]
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch
import torch.multiprocessing as mp
from tabulate import tabulate
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distill_ee import distributed, schedule_from_text  # noqa: E402
from distill_ee.apputils.models import create_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCHEDULE = (ROOT / "schedules" / "lenet_mnist.earlyexit_agp.yaml").read_text()
GLOBAL_BATCH = 128
EPOCH = 1  # AGP and the exit are both active in epoch 1 of the schedule


class Trainer:
    """A lenet, its optimizer and scheduler, and the README loop's steps on a fixed batch."""

    def __init__(self, wrap: bool, batch: int, **ddp_kwargs):
        torch.manual_seed(0)
        self.model = create_model("lenet_mnist", 10, 1)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.scheduler = schedule_from_text(self.model, self.optimizer, SCHEDULE,
                                            example_input=torch.zeros(1, 1, 28, 28))
        self.scheduler.share_across_processes = wrap  # the one-process candidate runs on rank 0 only
        self.net = distributed.wrap(self.model, self.scheduler, **ddp_kwargs) if wrap else self.model
        gen = torch.Generator().manual_seed(distributed.rank())
        self.x = torch.randn(batch, 1, 28, 28, generator=gen)
        self.y = torch.randint(0, 10, (batch,), generator=gen)
        self.share_seconds = 0.0
        share = self.scheduler._share_masks

        def timed_share() -> None:
            t0 = time.perf_counter()
            share()
            self.share_seconds += time.perf_counter() - t0
        self.scheduler._share_masks = timed_share
        self.scheduler.on_epoch_begin(EPOCH)

    def steps(self, n: int) -> float:
        """Seconds for ``n`` training steps."""
        s, net, opt = self.scheduler, self.net, self.optimizer
        net.train()
        t0 = time.perf_counter()
        for i in range(n):
            s.on_minibatch_begin(EPOCH, i, n)
            loss = s.before_backward_pass(EPOCH, i, n, nn.functional.cross_entropy(net(self.x), self.y),
                                          target=self.y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            s.before_parameter_optimization(EPOCH, i, n)
            opt.step()
            s.on_minibatch_end(EPOCH, i, n)
        return time.perf_counter() - t0


def timed(fn: Callable[[], None], repeats: int = 5) -> float:
    """Best of ``repeats`` timings of ``fn`` (seconds)."""
    best = float("inf")
    for _ in range(repeats):
        distributed.barrier()
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def worker(rank: int, world: int, port: int, rounds: int, steps: int, out: str) -> None:
    """One of the two processes: every candidate in interleaved rounds; rank 0 saves the figures."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    distributed.init_from_env("gloo")
    torch.set_num_threads(1)
    alone = Trainer(wrap=False, batch=GLOBAL_BATCH) if rank == 0 else None
    ddp = Trainer(wrap=True, batch=GLOBAL_BATCH // world)
    unused = Trainer(wrap=True, batch=GLOBAL_BATCH // world, find_unused_parameters=True)
    times: Dict[str, List[float]] = {"alone2": [], "alone1": [], "ddp": [], "unused": []}
    for trainer in (ddp, unused):
        trainer.steps(2)  # warm-up (DDP builds its buckets in the first steps)
    ddp.share_seconds = 0.0
    for _ in range(rounds):
        for name in times:
            distributed.barrier()
            if name.startswith("alone"):
                if rank == 0:
                    torch.set_num_threads(2 if name == "alone2" else 1)
                    times[name].append(alone.steps(steps) / steps)
                    torch.set_num_threads(1)
            else:
                times[name].append((ddp if name == "ddp" else unused).steps(steps) / steps)
    agree_per_step = ddp.share_seconds / (rounds * steps)
    masks = ddp.scheduler.masks

    def share_everything() -> None:
        for masker in masks.values():
            masker.version += 1  # as if every mask had changed: each mask and weight is broadcast
        distributed.share_masks(masks, ddp.scheduler._params, ddp.scheduler._shared_versions)
    full_share = timed(share_everything)
    agree_alone = timed(lambda: distributed.share_masks(masks, ddp.scheduler._params,
                                                        ddp.scheduler._shared_versions), repeats=50)
    rebuild = timed(ddp.net.rebuild)
    shared_bytes = sum(2 * p.numel() * p.element_size() for n, p in ddp.scheduler._params.items()
                       if masks[n].mask is not None)
    if rank == 0:
        torch.save({"times": times, "agree": agree_per_step, "agree_alone": agree_alone, "full_share": full_share,
                    "rebuild": rebuild, "shared_bytes": shared_bytes}, Path(out) / "result.pt")
    distributed.leave()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resnet18_envelope(gpus: int = 8, sparsity: float = 0.5) -> List[List[str]]:
    """Bytes per GPU: a pruning step's mask share vs one step's gradient all-reduce, for torchvision's ResNet-18."""
    import torchvision
    model = torchvision.models.resnet18()
    total = sum(p.numel() for p in model.parameters())
    pruned = sum(p.numel() for p in model.parameters() if p.dim() in (2, 4))
    allreduce = 2 * (gpus - 1) / gpus * 4 * total  # ring all-reduce of float32 gradients, sent per GPU
    share = 2 * 4 * pruned  # each changed mask and its weight, float32, reach every GPU once
    steps_per_epoch = 1_281_167 // (32 * gpus)  # ImageNet at 32 images per GPU
    return [
        ["parameters (pruned weights)", f"{total / 1e6:.2f} M ({pruned / 1e6:.2f} M)"],
        ["gradient all-reduce per step, per GPU", f"{allreduce / 1e6:.1f} MB"],
        [f"mask + weight share per pruning step ({sparsity:.0%} sparsity: masks are dense)",
         f"{share / 1e6:.1f} MB = {share / allreduce:.2f} steps of all-reduce"],
        [f"pruning once per epoch ({steps_per_epoch} steps)", f"{share / allreduce / steps_per_epoch:.3%} of the "
                                                              "epoch's gradient traffic"],
        ["agreement per step (1 byte per mask, 62 masks)", "62 B: latency-bound, about one small all-reduce"],
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(worker, args=(2, free_port(), args.rounds, args.steps, out), nprocs=2)
        r = torch.load(Path(out) / "result.pt", weights_only=False)
    times = r["times"]
    best = {k: min(v) for k, v in times.items()}
    spread = {k: statistics.median(v) / min(v) for k, v in times.items()}
    labels = {"alone2": "1 process, 2 threads", "alone1": "1 process, 1 thread",
              "ddp": "2 processes x 1 thread (distributed.wrap)", "unused": "2 processes, find_unused_parameters"}
    rows = [[labels[k], f"{GLOBAL_BATCH / best[k]:.0f}", f"{best[k] * 1e3:.1f}", f"{best['alone2'] / best[k]:.2f}",
             f"{spread[k]:.2f}"] for k in times]
    print(f"lenet_mnist + exit + AGP, global batch {GLOBAL_BATCH}, {args.rounds} interleaved rounds of "
          f"{args.steps} steps (best round; spread = median / best)")
    print(tabulate(rows, headers=["candidate", "samples/s", "ms/step", "vs 1 process", "spread"]))
    busy = max(spread.values()) > 1.15
    step = best["ddp"]
    print()
    print(tabulate([
        ["mask sharing in this schedule's steps (AGP prunes at epoch begins)", f"{r['agree'] * 1e3:.3f} ms",
         f"{r['agree'] / step:.2%} of a step"],
        ["agreeing on changed masks, per step, when a policy may change them in every minibatch",
         f"{r['agree_alone'] * 1e3:.3f} ms", f"{r['agree_alone'] / step:.2%} of a step"],
        [f"sharing every mask and weight ({r['shared_bytes'] / 1e6:.1f} MB), after a pruning step",
         f"{r['full_share'] * 1e3:.2f} ms", f"{r['full_share'] / step:.2f} steps"],
        ["rebuilding DDP (thinning; exits starting or stopping)", f"{r['rebuild'] * 1e3:.2f} ms",
         f"{r['rebuild'] / step:.2f} steps"],
        ["find_unused_parameters instead, every step", "", f"{best['unused'] / step - 1:+.1%} per step"],
    ], headers=["DDP extra", "time", "ratio"]))
    if busy:
        print("\nwarning: the machine was busy (a candidate's median round was more than 15% above its best)")
    print("\nResNet-18 on 8 GPUs (back-of-envelope):")
    print(tabulate(resnet18_envelope(), tablefmt="plain"))


if __name__ == "__main__":
    main()
