"""Mutated ready schedules: each mutant is accepted (and then runs a few epochs of hooks without failing) or
refused with one located ScheduleError; never another exception, never more than a few seconds.

Mutations, drawn with a fixed seed: a key deleted or misspelled, a value swapped for one of another type or a
non-finite or absurd number, an alias bomb, a recursive anchor, deep nesting, a control character, the text
cut short.
"""
import math
import random
import re
import time
from pathlib import Path
from typing import Any, Callable, List, Tuple

import pytest
import torch
import yaml

from distill_ee.apputils.models import create_model
from distill_ee.errors import DistillEEError, ScheduleError
from distill_ee.schedule import schedule_from_text
from support import one_epoch_of_one_step

pytestmark = pytest.mark.slow

SCHEDULES = Path(__file__).resolve().parents[2] / "schedules"
#: ready schedule -> (architecture, input shape)
TARGETS = {
    "lenet_mnist.earlyexit_agp.yaml": ("lenet_mnist", (1, 28, 28)),
    "lenet_mnist.earlyexit.yaml": ("lenet_mnist", (1, 28, 28)),
    "lenet_mnist.agp.yaml": ("lenet_mnist", (1, 28, 28)),
    "resnet20_cifar.earlyexit.yaml": ("resnet20_cifar", (3, 32, 32)),
    "resnet20_cifar.agp_filters_thinning.yaml": ("resnet20_cifar", (3, 32, 32)),
    "resnet20_cifar.filters_thinning.yaml": ("resnet20_cifar", (3, 32, 32)),
    "resnet20_mnist.skipnet_exits_agp.yaml": ("resnet20_cifar", (1, 28, 28)),
    "resnet20_mnist.blockdrop.yaml": ("resnet20_cifar", (1, 28, 28)),
    "msdnet_mnist.yaml": ("msdnet_mnist", (1, 28, 28)),
    "lenet_mnist.qat_exit.yaml": ("lenet_mnist", (1, 28, 28)),
    "resnet20_mnist.agp_thinning_exits_ptq.yaml": ("resnet20_cifar", (1, 28, 28)),
}
MUTANTS_PER_SCHEDULE = 40
#: a guard against a mutant that hangs (a runaway loop or allocation), not a speed test: a case takes about a
#: second on a quiet machine, and a loaded shared machine must not fail it
SECONDS_PER_CASE = 60.0
LOCATED = re.compile(r"^mutant\.yaml:\d+: ")
ODD_VALUES = [None, "", "text", True, -1, 0, 10 ** 30, 2 ** 63, -2 ** 63, 1e308, math.inf, -math.inf, math.nan,
              [], [1, 2], {}, {"k": 0.3}, 0.5, 1.5, -0.5, "1e-3", "auto"]


def paths(node: Any, prefix: Tuple = ()) -> List[Tuple]:
    """Every path to a value inside ``node``."""
    out = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            out += paths(value, prefix + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += paths(value, prefix + (i,))
    return out


def parent_of(data: Any, path: Tuple) -> Any:
    for key in path[:-1]:
        data = data[key]
    return data


def tree_mutation(rng: random.Random, text: str) -> str:
    data = yaml.safe_load(text)
    path = rng.choice([p for p in paths(data) if p])
    parent, key = parent_of(data, path), path[-1]
    kind = rng.choice(["delete", "replace", "replace", "rename"])
    if kind == "delete":
        del parent[key]
    elif kind == "replace":
        parent[key] = rng.choice(ODD_VALUES)
    elif isinstance(parent, dict):
        parent[str(key)[:-1] + "x"] = parent.pop(key)
    else:
        parent[key] = rng.choice(ODD_VALUES)
    return yaml.safe_dump(data, sort_keys=False)


def text_mutation(rng: random.Random, text: str) -> str:
    lines = text.splitlines()
    at = rng.randrange(len(lines))
    kind = rng.choice(["control", "bomb", "recursive", "nesting", "truncate", "tab"])
    if kind == "control":
        pos = rng.randrange(len(text))
        return text[:pos] + rng.choice("\x00\x01\x07\x1b\x7f\x85\x9b\ufffe") + text[pos:]
    if kind == "bomb":
        bomb = "x: &a [q, q, q, q, q, q, q, q, q]\n" + "".join(
            f"x{n}: &{n} [{', '.join(['*' + p] * 9)}]\n" for p, n in zip("abcdefg", "bcdefgh"))
        return text + "\n" + bomb.replace("x", "pruners" if rng.random() < 0.5 else "zz", 1)
    if kind == "recursive":
        return text + "\nextensions: &r {loop: *r}\n"
    if kind == "nesting":
        depth = rng.choice([30, 70, 2000])
        return text + "\nregularizers: " + "[" * depth + "]" * depth + "\n"
    if kind == "truncate":
        return text[:rng.randrange(1, len(text))]
    lines[at] = "\t" + lines[at]
    return "\n".join(lines)


def cases() -> List[Tuple[str, int]]:
    return [(name, i) for name in TARGETS for i in range(MUTANTS_PER_SCHEDULE)]


def due_epochs(scheduler: Any) -> List[int]:
    """The first, the last and one middle epoch in which any policy runs (at most 3)."""
    epochs = sorted({e for sp in scheduler.scheduled for e in sp.policy.due_epochs[:1] + sp.policy.due_epochs[-1:]})
    return epochs[:3]


@pytest.mark.parametrize("name, index", cases())
def test_a_mutated_ready_schedule_is_accepted_or_refused_with_its_location(name, index):
    rng = random.Random(f"{name}:{index}")
    text = (SCHEDULES / name).read_text()
    mutate: Callable[[random.Random, str], str] = rng.choice([tree_mutation, tree_mutation, text_mutation])
    mutant = mutate(rng, text)
    arch, shape = TARGETS[name]
    torch.manual_seed(0)
    model = create_model(arch, 10, shape[0])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    started = time.perf_counter()
    try:
        scheduler = schedule_from_text(model, optimizer, mutant, file="mutant.yaml",
                                       example_input=torch.zeros(1, *shape))
    except ScheduleError as err:
        assert LOCATED.match(str(err)), f"refused without a location: {err}\n--- mutant:\n{mutant}"
        assert "\n" not in str(err)
    except DistillEEError as err:
        pytest.fail(f"refused without a location ({type(err).__name__}): {err}\n--- mutant:\n{mutant}")
    else:
        for epoch in due_epochs(scheduler):  # accepted: it must also run
            one_epoch_of_one_step(model, optimizer, scheduler, epoch, torch.randn(2, *shape), torch.tensor([0, 1]))
    assert time.perf_counter() - started < SECONDS_PER_CASE
