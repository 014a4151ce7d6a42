"""Early exit, measured: backbone vs. compute-every-exit vs. real early exit vs. the oracle time bound.

    python benchmarks/early_exit_speed.py [--epochs 12] [--drop 0.25] [--skip-resnet] [--channels-last]

1. lenet_mnist with one B-LeNet-style exit, trained here on the embedded MNIST digits (or --checkpoint from a
   compress_classifier.py run); thresholds are chosen on the validation split to keep top-1 within --drop
   points of the final exit (default 0.25 on validation, a margin for a 0.5-point target on test); timed on
   the test split.
2. A resnet20_cifar-shaped model with two exits on synthetic 3x32x32 inputs (timing only; thresholds put
   about half of the samples out at exit 1 and a quarter at exit 2), dense and with 50% of the filters of
   its layerX.Y.conv1 convolutions pruned and physically removed.

Per row: per-sample milliseconds of the backbone without exits, Distiller's way (every exit computed, then a
pick), real early exit, the oracle bound (sum_k fraction_k x time to reach exit k, measured at the same batch
size) and the MACs bound (backbone time x expected MACs / backbone MACs); efficiency = oracle / real.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, List, Tuple

import torch
import yaml
from tabulate import tabulate
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distill_ee.apputils.calibration import parse_target  # noqa: E402
from distill_ee.apputils.datasets import load_dataset, make_loaders  # noqa: E402
from distill_ee.apputils.models import create_model  # noqa: E402
from distill_ee.apputils.timing import compare_speed  # noqa: E402
from distill_ee.apputils.train import evaluate, train_one_epoch  # noqa: E402
from distill_ee.checkpoint import load_checkpoint  # noqa: E402
from distill_ee.early_exit.calibrate import calibrate_exits  # noqa: E402
from distill_ee.early_exit.cost import exit_macs  # noqa: E402
from distill_ee.early_exit.decisions import decide_exits  # noqa: E402
from distill_ee.early_exit.exits import EarlyExits  # noqa: E402
from distill_ee.early_exit.stats import collect_exit_logits, expected_macs, exit_statistics  # noqa: E402
from distill_ee.schedule import schedule_from_text  # noqa: E402
from distill_ee.summaries import total_macs  # noqa: E402
from distill_ee.thinning import remove_filters  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LENET_EXITS = """
version: 1
early_exits:
  branchy:
    class: EarlyExit
    final_loss_weight: 1.0
    exits:
      exit1:
        attach: pool1
        branch:
          - {type: conv, out_channels: 10, kernel_size: 3, padding: 1}
          - relu
          - {type: maxpool, kernel_size: 2}
          - flatten
          - {type: linear}
        loss_weight: 1.0
        threshold: 0.05
lr_schedulers:
  step: {class: StepLR, step_size: 5, gamma: 0.3}
policies:
  - early_exit: {instance_name: branchy}
    starting_epoch: 0
    ending_epoch: 1000
  - lr_scheduler: {instance_name: step}
    starting_epoch: 0
    ending_epoch: 1000
"""
RESNET_SCHEDULE = ROOT / "schedules" / "resnet20_cifar.earlyexit.yaml"


def resnet_exit_config() -> dict:
    """The exits of the ready resnet20_cifar schedule (after layer1 and layer2), without its class key."""
    config = dict(yaml.safe_load(RESNET_SCHEDULE.read_text())["early_exits"]["exits"])
    config.pop("class")
    return config


def train_lenet(epochs: int, seed: int) -> Tuple[nn.Module, EarlyExits, Any]:
    """lenet_mnist + one exit, trained jointly on the embedded MNIST."""
    torch.manual_seed(seed)
    splits = load_dataset("mnist5k", valid_size=0.1)
    loaders = make_loaders(splits, 64, seed=seed)
    model = create_model("lenet_mnist", 10, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4)
    sched = schedule_from_text(model, opt, LENET_EXITS, example_input=torch.zeros(1, 1, 28, 28))
    crit = nn.CrossEntropyLoss()
    for epoch in range(epochs):
        sched.on_epoch_begin(epoch, opt)
        train_one_epoch(model, loaders[0], crit, opt, sched, epoch, torch.device("cpu"), print_freq=10 ** 6)
        sched.on_epoch_end(epoch, opt, metrics={})
    return model, sched.find("early_exit")[0].exits, loaders


def load_lenet(path: str, seed: int) -> Tuple[nn.Module, EarlyExits, Any]:
    """lenet_mnist and its exits from a compress_classifier.py checkpoint."""
    model = create_model("lenet_mnist", 10, 1)
    load_checkpoint(model, path)
    policy = EarlyExits.of(model)
    splits = load_dataset("mnist5k", valid_size=0.1)
    return model, policy, make_loaders(splits, 64, seed=seed)


def choose_threshold(exits: EarlyExits, valid_loader: Any, drop: float) -> float:
    """Calibrate on the validation split: fewest MACs with top-1 within ``drop`` points of the final exit."""
    return calibrate_exits(exits, valid_loader, parse_target(f"drop={drop}")).thresholds[0]


def quantile_thresholds(multi: Any, inputs: torch.Tensor, shares: List[float]) -> List[float]:
    """Entropy thresholds so that about ``shares[k]`` of the samples still present leave at exit k."""
    logits = multi.eval().simulate(inputs)
    thresholds, pending = [], torch.ones(inputs.shape[0], dtype=torch.bool)
    for k, share in enumerate(shares):
        entropy = -(logits[k].softmax(1) * logits[k].log_softmax(1)).sum(1)
        values = entropy[pending].sort().values
        want = int(round(share * len(values)))
        t = float(values[min(want, len(values) - 1)]) if want else float("-inf")
        thresholds.append(t)
        pending &= ~(entropy < t)
    return thresholds


def resnet_variant(thinned: bool, seed: int) -> Tuple[nn.Module, EarlyExits]:
    """resnet20_cifar with two exits; optionally 50% of the layerX.Y.conv1 filters pruned and removed."""
    torch.manual_seed(seed)
    model = create_model("resnet20_cifar", 10, 3)
    if thinned:
        for name, module in model.named_modules():
            if name.startswith("layer") and name.endswith("conv1"):
                norms = module.weight.detach().abs().sum(dim=(1, 2, 3))
                drop = norms.argsort()[: module.out_channels // 2]
                with torch.no_grad():
                    module.weight[drop] = 0.0
        remove_filters(model, None)
    policy = EarlyExits.from_config(resnet_exit_config(), model, num_classes=10, input_shape=(3, 32, 32))
    return model, policy


def speed_rows(label: str, model: nn.Module, multi: Any, inputs: torch.Tensor, macs_ratio: float,
               accuracy: str, channels_last: bool, repeats: int) -> List[List[Any]]:
    """Table rows at batch 256 and batch 1 for one model."""
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    rows = []
    for bs, data in ((256, inputs), (1, inputs[:200])):
        r = compare_speed(model, multi, data, bs, repeats=repeats)
        ms = {k: 1000.0 * r[k] for k in ("backbone", "every_exit", "real", "oracle")}
        rows.append([label, bs, f"{ms['backbone']:.3f}", f"{ms['every_exit']:.3f}", f"{ms['real']:.3f}",
                     f"{ms['oracle']:.3f}", f"{ms['backbone'] * macs_ratio:.3f}",
                     f"{ms['oracle'] / ms['real']:.2f}", f"{ms['backbone'] / ms['real']:.2f}x",
                     f"{1 / macs_ratio:.2f}x", " / ".join(f"{100 * f:.0f}" for f in r["fractions"]), accuracy])
    return rows


def lenet_rows(args: argparse.Namespace) -> List[List[Any]]:
    """Train (or load), choose the threshold on validation, measure on test."""
    if args.checkpoint:
        model, policy, loaders = load_lenet(args.checkpoint, args.seed)
    else:
        model, policy, loaders = train_lenet(args.epochs, args.seed)
    _, valid_loader, test_loader = loaders
    policy.set_thresholds([choose_threshold(policy, valid_loader, args.drop)])
    multi = policy.multi_exit_model().eval()
    logits, targets = collect_exit_logits(multi, test_loader)
    rows = exit_statistics(logits, targets, multi.criteria, multi.thresholds, exit_macs(multi, model))
    top1_ee = sum(r["taken_pct"] * (r["top1_taken"] or 0.0) for r in rows) / 100.0
    final = evaluate(model, test_loader, nn.CrossEntropyLoss(), torch.device("cpu"), desc="test",
                     print_freq=10 ** 6)["top1"]
    dense = total_macs(model, torch.zeros(1, 1, 28, 28))[0]
    inputs = torch.cat([x for x, _ in test_loader])
    acc = f"{top1_ee:.2f} vs {final:.2f} (thr {multi.thresholds[0]:.3f})"
    return speed_rows("lenet_mnist + exit", model, multi, inputs, expected_macs(rows) / dense, acc,
                      args.channels_last, args.repeats)


def resnet_rows(args: argparse.Namespace, thinned: bool) -> List[List[Any]]:
    """Synthetic-input timing of the resnet20-shaped model with two exits."""
    model, policy = resnet_variant(thinned, args.seed)
    model.eval()
    g = torch.Generator().manual_seed(args.seed)
    inputs = torch.randn(512, 3, 32, 32, generator=g)
    multi = policy.multi_exit_model().eval()
    multi.set_thresholds(quantile_thresholds(multi, inputs, [0.5, 0.5]))
    macs = exit_macs(multi, model)
    logits = multi.simulate(inputs)
    _, idx = decide_exits(logits, multi.criteria, multi.thresholds)
    fractions = torch.bincount(idx, minlength=3).float() / idx.numel()
    dense = total_macs(model, torch.zeros(1, 3, 32, 32))[0]
    ratio = float(sum(f * m for f, m in zip(fractions.tolist(), macs))) / dense
    label = "resnet20 thinned 50% + exits" if thinned else "resnet20_cifar + 2 exits"
    return speed_rows(label, model, multi, inputs, ratio, "synthetic", args.channels_last, args.repeats)


def main() -> None:
    """Run the measurements and print one table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--checkpoint", default=None, help="lenet_mnist checkpoint with exits (skips training)")
    ap.add_argument("--drop", type=float, default=0.25,
                    help="max top-1 drop (points) on the 400-image validation split; half of the 0.5-point "
                         "test target, as margin for the validation/test difference")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-resnet", action="store_true")
    ap.add_argument("--channels-last", action="store_true", help="NHWC memory format for convolutions")
    args = ap.parse_args()
    rows = lenet_rows(args)
    if not args.skip_resnet:
        rows += resnet_rows(args, thinned=False)
        rows += resnet_rows(args, thinned=True)
    headers = ["model", "batch", "backbone ms", "every exit ms", "real EE ms", "oracle ms", "MACs-bound ms",
               "oracle/real", "speedup", "MACs speedup", "exit % (k..final)", "top-1 EE vs final"]
    print(tabulate(rows, headers=headers, tablefmt="github"))
    print("per-sample milliseconds; oracle/real is the share of the physical limit real early exit reaches "
          "(targets: >= 0.90 at batch 256, >= 0.75 at batch 1)")


if __name__ == "__main__":
    main()
