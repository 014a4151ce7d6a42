"""Mutated ready schedules: each mutant is accepted (and then runs a few epochs of hooks without failing) or
refused with one located ScheduleError; never another exception, never a hang.

Mutations, drawn with a fixed seed: a key deleted or misspelled, a value swapped for one of another type or a
non-finite or absurd number, an alias bomb, a recursive anchor, deep nesting, a control character, the text
cut short.
"""
import random
import re
from pathlib import Path
from typing import Any, List, Tuple

import pytest
import torch

from distill_ee.apputils.models import create_model
from distill_ee.errors import DistillEEError, ScheduleError
from distill_ee.schedule import schedule_from_text
from mutation_support import mutant
from support import no_hang, one_epoch_of_one_step

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
LOCATED = re.compile(r"^mutant\.yaml:\d+: ")
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
    mutated = mutant(rng, text, key="pruners")
    arch, shape = TARGETS[name]
    torch.manual_seed(0)
    model = create_model(arch, 10, shape[0])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    with no_hang():
        check_mutant(model, optimizer, mutated, shape)


def check_mutant(model, optimizer, mutated, shape):
    """Accepted (and then run) or refused with one located line."""
    try:
        scheduler = schedule_from_text(model, optimizer, mutated, file="mutant.yaml",
                                       example_input=torch.zeros(1, *shape))
    except ScheduleError as err:
        assert LOCATED.match(str(err)), f"refused without a location: {err}\n--- mutant:\n{mutated}"
        assert "\n" not in str(err)
    except DistillEEError as err:
        pytest.fail(f"refused without a location ({type(err).__name__}): {err}\n--- mutant:\n{mutated}")
    else:
        for epoch in due_epochs(scheduler):  # accepted: it must also run
            one_epoch_of_one_step(model, optimizer, scheduler, epoch, torch.randn(2, *shape), torch.tensor([0, 1]))
