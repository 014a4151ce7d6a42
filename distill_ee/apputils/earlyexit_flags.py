"""Distiller's --earlyexit_thresholds / --earlyexit_lossweights shorthand, written out as a schedule."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from ..errors import ConfigError

_POOL_LINEAR: List[Any] = [{"type": "adaptive_avgpool", "output_size": 1}, "flatten", {"type": "linear"}]
_CONV_BRANCH: List[Any] = [{"type": "conv", "out_channels": 32, "kernel_size": 3, "stride": 2, "padding": 1},
                           {"type": "bn"}, "relu", *_POOL_LINEAR]
_LENET_BRANCH: List[Any] = [{"type": "conv", "out_channels": 10, "kernel_size": 3, "padding": 1}, "relu",
                            {"type": "maxpool", "kernel_size": 2}, "flatten", {"type": "linear"}]

#: Distiller's resnet*_cifar_earlyexit exit: 3x3 average pooling of layer1.2's output, then a linear classifier
_DISTILLER_CIFAR_EXIT: List[Dict[str, Any]] = [
    {"attach": "layer1.2.relu2", "branch": [{"type": "avgpool", "kernel_size": 3}, "flatten", {"type": "linear"}]}]

#: the suffix of Distiller's architecture names whose exits come from the --earlyexit_* flags
EARLYEXIT_SUFFIX = "_earlyexit"

#: the run directory's copy of the schedule the shorthand flags describe
SHORTHAND_FILE = "earlyexit_schedule.yaml"

#: arch pattern -> exit points and branches used by the shorthand flags
DEFAULT_EXITS: Dict[str, List[Dict[str, Any]]] = {
    "lenet_mnist": [{"attach": "pool1", "branch": _LENET_BRANCH}],
    "simplenet_mnist": [{"attach": "pool1", "branch": _LENET_BRANCH}],
    "resnet_cifar": [{"attach": "layer1", "branch": _CONV_BRANCH}, {"attach": "layer2", "branch": _POOL_LINEAR}],
    "resnet": [{"attach": "layer1", "branch": _CONV_BRANCH}, {"attach": "layer2", "branch": _POOL_LINEAR},
               {"attach": "layer3", "branch": _POOL_LINEAR}],
}


def default_exits(arch: str) -> List[Dict[str, Any]]:
    """The shorthand's exit points for ``arch``; ConfigError for archs without defaults."""
    if arch in DEFAULT_EXITS:
        return DEFAULT_EXITS[arch]
    if arch.startswith("resnet") and arch.endswith("_cifar" + EARLYEXIT_SUFFIX):
        return _DISTILLER_CIFAR_EXIT
    if arch.startswith("resnet") and arch.endswith("_cifar"):
        return DEFAULT_EXITS["resnet_cifar"]
    if arch in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"):
        return DEFAULT_EXITS["resnet"]
    raise ConfigError(f"--earlyexit_* flags have no default exit points for --arch {arch}; "
                      "declare the exits in an early_exits section of the --compress schedule")


def require_exit_flags(arch: str, shorthand: bool, schedule: Optional[str], resume: Optional[str]) -> None:
    """A Distiller ``*_earlyexit`` architecture takes its exit from the --earlyexit_* flags (or a schedule or a
    checkpoint that has exits): ConfigError when none of them is given, as Distiller cannot train it either."""
    if arch.endswith(EARLYEXIT_SUFFIX) and not (shorthand or schedule or resume):
        n = len(default_exits(arch))
        raise ConfigError(f"--arch {arch} has {n} early exit(s), as in Distiller: give {n} value(s) to each of "
                          f"--earlyexit_thresholds and --earlyexit_lossweights (or use --arch "
                          f"{arch[:-len(EARLYEXIT_SUFFIX)]} for the network without exits)")


def shorthand_config(arch: str, thresholds: Optional[List[float]],
                     lossweights: Optional[List[float]], epochs: int) -> Dict[str, Any]:
    """A schedule dict with the arch's default exits, the given thresholds and loss weights."""
    points = default_exits(arch)
    n = len(points)
    thresholds = list(thresholds or [])
    lossweights = list(lossweights or [])
    if len(thresholds) != n or len(lossweights) != n:
        raise ConfigError(f"--arch {arch} has {n} default exit(s): give {n} value(s) to each of "
                          f"--earlyexit_thresholds and --earlyexit_lossweights "
                          f"(got {len(thresholds)} and {len(lossweights)})")
    if sum(lossweights) >= 1.0:
        raise ConfigError("--earlyexit_lossweights must sum to less than 1 (the final exit gets 1 - their sum)")
    exits = {f"exit{i + 1}": {"attach": p["attach"], "branch": p["branch"], "loss_weight": w, "threshold": t}
             for i, (p, w, t) in enumerate(zip(points, lossweights, thresholds))}
    return {
        "version": 1,
        "early_exits": {"exits": {"class": "EarlyExit", "criterion": "entropy", "final_loss_weight": "auto",
                                  "exits": exits}},
        "policies": [{"early_exit": {"instance_name": "exits"}, "starting_epoch": 0,
                      "ending_epoch": max(epochs, 1), "frequency": 1}],
    }
