"""Exits on models nobody here wrote: six checks over torchvision's classification zoo, one row per model.

Each model is built by torchvision with random weights (10 classes, a small input) and taken through what a
user does with it, each check on the result of the one before:

* ``attach``: a schedule attaches two exits by layer name, and a filter pruner and a thinner next to them;
* ``thin``: a one-shot pruner zeroes half the filters of one conv, and a thinner removes them at the first step
  (before training, so no batch-norm shift has grown on the zero channels): the thinned model's logits equal its
  masked self's (how many filters went, and where a target was kept, the framework's reason: ⛔);
* ``train``: an epoch of a few steps of the thinned model with the joint loss, the scheduler's hooks called;
* ``real = sim``: real early exit (stages really skipped) gives the simulated exits' predictions and logits;
* ``onnx``: the multi-exit model exported and run on ONNX Runtime, same exits and logits as PyTorch;
* ``checkpoint``: the checkpoint restored into a freshly built model, same logits and exits.

A cell is ✅ (with a figure where there is one), ⛔ a refusal with the framework's own located reason (which
docs/any-model.md explains), or ❌ a failure, in one line. ``--write`` writes benchmarks/results/model_zoo.md.

    python benchmarks/model_zoo.py [--only resnet50 swin_t] [--write]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torchvision
from tabulate import tabulate
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import distill_ee  # noqa: E402
from distill_ee.modules import first_line  # noqa: E402
from distill_ee.thinning.extensions import StructureRemover  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "model_zoo.md"
CHECKS = ("attach", "thin", "train", "real = sim", "onnx", "checkpoint")
POOLED = ["adaptive_avgpool", "flatten", "linear"]
ATOL = 1e-4


@dataclass
class Zoo:
    """One torchvision model: how it is built, its input, where its exits read, the conv its pruner thins."""

    name: str
    attach: Tuple[str, str]
    prune: str
    size: int = 64
    branch: List[Any] = field(default_factory=lambda: list(POOLED))
    kwargs: Dict[str, Any] = field(default_factory=dict)
    #: a torchvision class to build instead of the named builder (small configurations of the big models)
    cls: Optional[str] = None

    def build(self) -> nn.Module:
        """The model with random weights and 10 classes."""
        if self.cls is not None:
            return getattr(torchvision.models, self.cls)(num_classes=10, **self.kwargs)
        return torchvision.models.get_model(self.name, weights=None, num_classes=10, **self.kwargs)


ZOO = [
    Zoo("resnet50", ("layer1", "layer2"), "layer2.0.conv1.weight"),
    Zoo("mobilenet_v2", ("features.3", "features.7"), "features.7.conv.0.0.weight"),
    Zoo("mobilenet_v3_large", ("features.4", "features.7"), "features.5.block.0.0.weight"),
    Zoo("efficientnet_b0", ("features.2", "features.4"), "features.3.0.block.0.0.weight"),
    Zoo("convnext_tiny", ("features.1", "features.3"), "features.0.0.weight"),
    Zoo("regnet_y_400mf", ("trunk_output.block1", "trunk_output.block2"),
        "trunk_output.block2.block2-0.f.a.0.weight"),
    Zoo("densenet121", ("features.transition1", "features.transition2"),
        "features.denseblock2.denselayer1.conv1.weight"),
    Zoo("shufflenet_v2_x1_0", ("stage2", "stage3"), "stage3.0.branch2.0.weight"),
    Zoo("squeezenet1_1", ("features.4", "features.7"), "features.6.squeeze.weight"),
    Zoo("vgg11_bn", ("features.7", "features.14"), "features.8.weight"),
    Zoo("googlenet", ("inception3b", "inception4c"), "inception4a.branch2.0.conv.weight",
        kwargs={"aux_logits": False, "init_weights": True}),
    Zoo("inception_v3", ("Mixed_5d", "Mixed_6b"), "Mixed_6a.branch3x3dbl_1.conv.weight", size=96,
        kwargs={"aux_logits": False, "init_weights": True}),
    Zoo("swin_t", ("features.1", "features.3"), "features.0.0.weight", branch=["token_mean", "linear"]),
    Zoo("vit (small)", ("encoder.layers.encoder_layer_1", "encoder.layers.encoder_layer_2"), "conv_proj.weight",
        size=32, branch=["layernorm", "cls_token", "linear"], cls="VisionTransformer",
        kwargs={"image_size": 32, "patch_size": 8, "num_layers": 4, "num_heads": 2, "hidden_dim": 32,
                "mlp_dim": 64}),
    Zoo("maxvit (small)", ("blocks.0", "blocks.1"), "stem.0.0.weight", cls="MaxVit",
        kwargs={"input_size": (64, 64), "stem_channels": 16, "partition_size": 2, "block_channels": [16, 32],
                "block_layers": [1, 1], "head_dim": 8, "stochastic_depth_prob": 0.0}),
]


def schedule_text(zoo: Zoo) -> str:
    """Two exits, a one-shot L1 filter pruner (half the filters of one conv) and a thinner, both in epoch 0."""
    exits = "".join(f"      exit{k + 1}:\n        attach: {name}\n        branch: {zoo.branch}\n"
                    f"        loss_weight: 0.3\n        threshold: 0.5\n" for k, name in enumerate(zoo.attach))
    return (f"version: 1\nearly_exits:\n  branchy:\n    class: EarlyExit\n    exits:\n{exits}"
            f"pruners:\n  filters:\n    class: L1RankedStructureParameterPruner\n    group_type: Filters\n"
            f"    desired_sparsity: 0.5\n    weights: [{zoo.prune}]\n"
            f"extensions:\n  thinner: {{class: FilterRemover, thinning_func_str: remove_filters}}\n"
            f"policies:\n  - early_exit: {{instance_name: branchy}}\n    starting_epoch: 0\n    ending_epoch: 2\n"
            f"  - pruner: {{instance_name: filters}}\n    epochs: [0]\n"
            f"  - extension: {{instance_name: thinner}}\n    epochs: [0]\n")


class Refused(Exception):
    """A check the framework declined with its own located reason (documented), not a failure."""


class Run:
    """One model taken through the checks, each a method that returns its cell's figure."""

    def __init__(self, zoo: Zoo, steps: int):
        self.zoo, self.steps = zoo, steps
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(8, 3, zoo.size, zoo.size, generator=gen)
        self.y = torch.randint(0, 10, (8,), generator=gen)
        torch.manual_seed(0)
        self.model = zoo.build()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.001, momentum=0.9)
        self.scheduler: Any = None
        self.multi: Any = None
        self.tmp = Path(tempfile.mkdtemp(prefix=f"zoo-{zoo.name}-"))

    def attach(self) -> str:
        self.scheduler = distill_ee.schedule_from_text(self.model, self.optimizer, schedule_text(self.zoo),
                                                       example_input=self.x[:2])
        return f"{len(distill_ee.EarlyExits.of(self.model).exit_names)} exits"

    def _step(self, epoch: int, i: int, begin: bool = True) -> float:
        """One training step with the scheduler's minibatch hooks (``begin=False``: its first hook already ran)."""
        if begin:
            self.scheduler.on_minibatch_begin(epoch, i, self.steps)
        self.model.train()
        loss = nn.functional.cross_entropy(self.model(self.x), self.y)
        loss = self.scheduler.before_backward_pass(epoch, i, self.steps, loss, target=self.y)
        self.optimizer.zero_grad()
        loss.backward()
        self.scheduler.before_parameter_optimization(epoch, i, self.steps)
        self.optimizer.step()
        self.scheduler.on_minibatch_end(epoch, i, self.steps)
        return float(loss.detach())

    def train(self) -> str:
        self.scheduler.on_epoch_begin(1)
        losses = [self._step(1, i) for i in range(self.steps)]
        self.scheduler.on_epoch_end(1)
        if not all(torch.isfinite(torch.tensor(losses))):
            raise RuntimeError(f"the joint loss is {losses}")
        return f"loss {losses[-1]:.2f}"

    def _logits(self) -> torch.Tensor:
        with torch.no_grad():
            return self.model.eval()(self.x)

    def thin(self) -> str:
        conv = self.zoo.prune.rsplit(".", 1)[0]
        before = dict(self.model.named_modules())[conv].out_channels
        self.scheduler.on_epoch_begin(0)  # the pruner sets its masks
        masked = self._logits()
        self.scheduler.on_minibatch_begin(0, 0, self.steps)  # the thinner's epoch: it thins here
        thinned = self._logits()
        for i in range(self.steps):
            self._step(0, i, begin=i > 0)
        self.scheduler.on_epoch_end(0)
        after = dict(self.model.named_modules())[conv].out_channels
        diff = float((thinned - masked).abs().max() / masked.abs().max().clamp_min(1e-12))
        if diff > 1e-5:
            raise RuntimeError(f"thinned logits differ from the masked model's by {diff:.1e} (relative)")
        if after == before:
            kept = [str(k) for p in self.scheduler.policies if isinstance(p, StructureRemover) for k in p.kept]
            if not kept:
                raise RuntimeError(f"{conv}: no filter removed ({before} kept) and no reason given")
            raise Refused(kept[0])
        return f"{before} -> {after} filters"

    def real_equals_simulated(self) -> str:
        self.model.eval()
        self.multi = distill_ee.EarlyExits.of(self.model).multi_exit_model().eval()
        with torch.no_grad():
            outs = self.multi.simulate(self.x)
            scores = [self.multi.criteria[k].score(o) for k, o in enumerate(outs[:-1])]
            self.multi.set_thresholds([_between(s) for s in scores])
            logits, index = self.multi(self.x)
            sim_logits, sim_index = self.multi.decide(self.multi.simulate(self.x))
        if not torch.equal(index, sim_index) or not torch.allclose(logits, sim_logits, atol=ATOL):
            raise RuntimeError("real early exit differs from the simulated exits")
        self.expected = (logits, index)
        return "exits " + "/".join(str(int(c)) for c in torch.bincount(index, minlength=3))

    def onnx(self) -> str:
        """Every exit's logits on ONNX Runtime equal PyTorch's; real early exit there takes PyTorch's exits."""
        from distill_ee.deploy import MultiExitSession
        from distill_ee.early_exit.onnx_export import export_onnx
        export_onnx(self.multi, self.model, self.tmp / "onnx")
        session = MultiExitSession(self.tmp / "onnx", threads=1)
        session.set_thresholds(self.multi.thresholds)
        with torch.no_grad():
            want = self.multi.simulate(self.x)
        got = [torch.from_numpy(o) for o in session.simulate(self.x.numpy())]
        diff = max(float((g - w).abs().max() / w.abs().max().clamp_min(1e-12)) for g, w in zip(got, want))
        if diff > 1e-4:
            raise RuntimeError(f"ONNX Runtime's exit logits differ from PyTorch's by {diff:.1e} (relative)")
        _, index = session(self.x.numpy())
        # random weights score samples nearly alike: one within rounding of a threshold may go either way
        clear = torch.ones(len(self.x), dtype=torch.bool)
        for k, logits in enumerate(want[:-1]):
            score, threshold = self.multi.criteria[k].score(logits), self.multi.thresholds[k]
            clear &= (score - threshold).abs() > 1e-6 * max(abs(threshold), 1.0)
        same = torch.from_numpy(index).long() == self.expected[1].long()
        if not bool(same[clear].all()):
            raise RuntimeError("real early exit on ONNX Runtime takes other exits than PyTorch")
        ties = f", {int((~clear).sum())} near-tie" if not bool(clear.all()) else ""
        return f"rel. diff {diff:.0e}{ties}"

    def checkpoint(self) -> str:
        path = self.tmp / "checkpoint.pth.tar"
        distill_ee.save_checkpoint(path, self.model, optimizer=self.optimizer, scheduler=self.scheduler, epoch=1)
        fresh = self.zoo.build()
        distill_ee.load_checkpoint(fresh, path)
        multi = distill_ee.EarlyExits.of(fresh).multi_exit_model().eval()
        with torch.no_grad():
            same = torch.equal(fresh.eval()(self.x), self.model.eval()(self.x))
            logits, index = multi(self.x)
        if not same or not torch.equal(index, self.expected[1]) or not torch.allclose(logits, self.expected[0]):
            raise RuntimeError("the restored model computes other logits")
        return f"{path.stat().st_size / 2 ** 20:.0f} MiB"


def _between(scores: torch.Tensor) -> float:
    """A threshold in the widest gap between the middle half of the scores: some samples leave and some stay,
    and none sits so near the edge that float rounding (ONNX Runtime against PyTorch) could move it."""
    ordered = scores.flatten().sort().values
    n = len(ordered)
    lo, hi = max(1, n // 4), max(2, n - n // 4)
    gaps = ordered[lo:hi] - ordered[lo - 1:hi - 1]
    i = lo + int(gaps.argmax())
    return float((ordered[i - 1] + ordered[i]) / 2)


def run_model(zoo: Zoo, steps: int) -> Dict[str, str]:
    """The row of one model: each check's cell, the checks after a failed one marked as not reached."""
    try:
        run = Run(zoo, steps)
    except Exception as err:  # a model this torchvision cannot build here
        return {"model": zoo.name, **{c: f"❌ build: {first_line(err)}"[:160] for c in CHECKS}, "seconds": "0"}
    acts = dict(zip(CHECKS, (run.attach, run.thin, run.train, run.real_equals_simulated, run.onnx,
                             run.checkpoint)))
    row = {"model": zoo.name}
    started = time.perf_counter()
    failed = False
    for check, act in acts.items():
        if failed:
            row[check] = "(not reached)"
            continue
        try:
            row[check] = "✅ " + act()
        except Refused as why:  # a documented refusal: the checks after it run on the unthinned model
            row[check] = f"⛔ {why}"[:200]
        except Exception as err:  # the point of the table: what a user would see, as one line
            row[check] = f"❌ {type(err).__name__}: {first_line(err)}"[:160]
            failed = failed or check in ("attach", "thin", "train")
    row["seconds"] = f"{time.perf_counter() - started:.0f}"
    return row


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the checks over the zoo (or ``--only`` some) and print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", metavar="NAME", choices=[z.name for z in ZOO],
                   help="these models only (names as in the table)")
    p.add_argument("--steps", type=int, default=2, help="training steps per epoch (default 2)")
    p.add_argument("--write", action="store_true", help=f"also write {RESULTS.name}")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = []
    for zoo in ZOO:
        if args.only and zoo.name not in args.only:
            continue
        print(f"... {zoo.name}", flush=True)
        rows.append(run_model(zoo, args.steps))
        print("    " + " | ".join(rows[-1][c] for c in CHECKS), flush=True)
    table = tabulate(rows, headers="keys", tablefmt="github")
    passed = sum(all(r[c].startswith("✅") for c in CHECKS) for r in rows)
    refused = sum(all(r[c].startswith(("✅", "⛔")) for c in CHECKS) for r in rows) - passed
    footer = (f"\n{passed} of {len(rows)} models pass all six checks, {refused} more with a located refusal (⛔); "
              f"torch {torch.__version__}, torchvision {torchvision.__version__}, {torch.get_num_threads()} threads, "
              f"CPU.")
    print(table + footer)
    if args.write:
        from distill_ee.atomic import atomic_write_text
        atomic_write_text(RESULTS, "# Exits on torchvision's classification zoo\n\n"
                          "Written by `python benchmarks/model_zoo.py --write`.\n\n" + table + "\n" + footer + "\n")
    return 0 if passed + refused == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
