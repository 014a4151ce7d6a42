"""Training on two gloo processes: the DDP loop of docs/distributed.md, with exits that stop training early,
AGP, random filter masks and thinning, ends bit-identical on both ranks and where a single process with the
same global batch ends; masks, evaluation and data sharding agree across ranks."""
import os
import re
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import TensorDataset

import distill_ee
import distill_ee.pruning.masks
from distill_ee import distributed
from distill_ee.early_exit.calibrate import CalibrationTarget, calibrate_exits
from distill_ee.modules import unwrap
from ddp_support import run_ranks
from test_user_loop import LOOP, data, user_namespace
from test_user_loop import SCHEDULE as USER_LOOP_SCHEDULE

pytestmark = pytest.mark.slow

DOC = Path(__file__).resolve().parents[1] / "docs" / "distributed.md"
SECTION = "## Your loop on many processes"

def ddp_schedule():
    """The README loop's schedule with a random-filter pruner added and the exits' policy ending half-way."""
    config = yaml.safe_load(USER_LOOP_SCHEDULE)
    config["pruners"]["dropfilter"] = {"class": "BernoulliFilterPruner", "desired_sparsity": 0.3,
                                       "group_type": "Filters", "weights": ["conv1.weight"]}
    exits_policy = config["policies"][0]
    assert "early_exit" in exits_policy and exits_policy["ending_epoch"] == 4
    exits_policy["ending_epoch"] = 2  # the branches are idle in epochs 2 and 3
    config["policies"].insert(2, {"pruner": {"instance_name": "dropfilter", "args": {
        "mini_batch_pruning_frequency": 1, "discard_masks_at_minibatch_end": True, "use_double_copies": True,
        "mask_on_forward_only": True}}, "starting_epoch": 0, "ending_epoch": 2})
    return yaml.safe_dump(config, sort_keys=False)


def readme_ddp_setup():
    """The python block of the DDP section of docs/distributed.md."""
    text = DOC.read_text()
    section = text[text.index(SECTION):]
    section = section[:section.index("\n## ", len(SECTION))]
    (block,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    return section, block


def loop_with_set_epoch():
    """The README's loop with the one line the DDP section says to add at the top of each epoch."""
    section, _ = readme_ddp_setup()
    assert "sampler.set_epoch(epoch)" in section
    return LOOP.replace("    model.train()\n", "    model.train()\n    sampler.set_epoch(epoch)\n", 1)


def readme_ddp_run(workdir, epochs=4):
    """One process of the documented DDP loop; rank 0 then calibrates the exits and shares the thresholds."""
    rank = int(os.environ.get("RANK", "0"))
    here = Path(workdir) / f"rank{rank}"
    here.mkdir(parents=True)
    os.chdir(here)
    (here / "schedule.yaml").write_text(ddp_schedule())
    ns = user_namespace(epochs)
    torch.manual_seed(rank)  # from here on each process draws different random numbers (filter masks)
    batches = data(0)
    ns["train_set"] = TensorDataset(torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches]))
    _, setup = readme_ddp_setup()
    exec(setup + loop_with_set_epoch(), ns)
    model, scheduler = unwrap(ns["model"]), ns["scheduler"]
    exits = distill_ee.EarlyExits.of(model)
    scheduled = exits.thresholds
    if distributed.is_main():
        calibrate_exits(exits, data(3, 48), CalibrationTarget("drop", (5.0,)))
    distributed.share_exits(model)
    return {"world": distributed.world_size(), "wrapped": type(ns["model"]).__name__,
            "state": {k: v.clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)},
            "masks": {n: (None if m.mask is None else m.mask.clone()) for n, m in scheduler.masks.items()},
            "scheduled_thresholds": scheduled, "thresholds": exits.thresholds, "criteria": exits.criteria,
            "lr": ns["optimizer"].param_groups[0]["lr"], "conv2": model.conv2.out_channels,
            "steps": [s["kind"] for s in distill_ee.structure_steps(model)],
            "rebuilds": getattr(ns["model"], "rebuilds", 0)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The documented DDP loop on two processes, and on one process with the same global batch."""
    two = run_ranks(readme_ddp_run, str(tmp_path_factory.mktemp("two")), world=2)
    one = run_ranks(readme_ddp_run, str(tmp_path_factory.mktemp("one")), world=1)
    return two, one[0]


def test_the_readme_ddp_loop_wraps_prunes_and_thins_on_two_processes(runs):
    (r0, r1), _ = runs
    assert r0["world"] == r1["world"] == 2 and r0["wrapped"] == "Replicated"
    assert r0["conv2"] == r1["conv2"] == 25  # AGP's 50% of conv2's filters removed by thinning in epoch 2
    assert r0["steps"] == ["early_exits", "thinning"] and r0["lr"] == pytest.approx(0.05 * 0.5 ** 2)


def test_weights_masks_and_thresholds_are_bit_identical_across_ranks(runs):
    (r0, r1), _ = runs
    assert list(r0["state"]) == list(r1["state"])
    for name, value in r0["state"].items():
        assert torch.equal(value, r1["state"][name]), name
    assert list(r0["masks"]) == list(r1["masks"])
    for name, mask in r0["masks"].items():
        other = r1["masks"][name]
        assert (mask is None) == (other is None) and (mask is None or torch.equal(mask, other)), name
    assert r0["thresholds"] == r1["thresholds"] and r0["criteria"] == r1["criteria"]


def test_rank_zeros_calibration_reaches_the_other_rank(runs):
    (r0, r1), _ = runs
    assert r1["scheduled_thresholds"] == [0.5, 0.5]
    assert r1["thresholds"] == r0["thresholds"] != [0.5, 0.5]


def test_two_processes_end_where_one_process_with_the_same_global_batch_ends(runs):
    # Same data order, the same random filter masks (rank 0's draws, broadcast), the same pruning decisions;
    # only the gradient sums are ordered differently (two means of 8 averaged vs one mean of 16). float32
    # rounding (~6e-8 relative) over 24 SGD steps with momentum stays far below 1e-5.
    (r0, _), single = runs
    assert single["world"] == 1 and single["wrapped"] == "Net" or single["wrapped"] != "Replicated"
    assert list(single["state"]) == list(r0["state"])
    worst = max(float((r0["state"][k].float() - v.float()).abs().max()) for k, v in single["state"].items()
                if v.numel())
    assert worst < 1e-5
    for name, mask in single["masks"].items():
        other = r0["masks"][name]
        assert (mask is None) == (other is None) and (mask is None or torch.equal(mask, other)), name


def test_ddp_is_rebuilt_when_the_exits_start_and_when_thinning_replaces_parameters(runs):
    # built at wrap (branches idle: no epoch has begun), again at the first step of epoch 0 (the exits' policy
    # trains them), and once more when thinning replaces conv2 and exit2's branch in epoch 2, after the exits'
    # policy ended in epoch 1: the rebuild then already leaves the idle branches out.
    (r0, r1), _ = runs
    assert r0["rebuilds"] == r1["rebuilds"] == 3


# --------------------------------------------------------------------------- masks
def random_masks_run(share):
    """Each rank draws its own random mask for two of three weights; rank 0's reach every rank when ``share``."""
    distributed.init_from_env()
    rank = distributed.rank()
    torch.manual_seed(100 + rank)
    params = {n: nn.Parameter(torch.randn(4, 3)) for n in ("a", "b", "c")}
    masks = {n: distill_ee.pruning.masks.ParameterMasker(n) for n in params}
    versions = {}
    for n in ("a", "b"):
        masks[n].mask = (torch.rand(4, 3) > 0.5).float()
        masks[n].apply_mask(params[n])
    if rank == 1:
        masks["c"].mask = torch.ones(4, 3)  # only rank 1 masks c: rank 0 says c has no mask
    shared = distributed.share_masks(masks, params, versions) if share else []
    again = distributed.share_masks(masks, params, versions) if share else []
    return {"shared": shared, "again": again, "params": {n: p.detach().clone() for n, p in params.items()},
            "masks": {n: m.mask for n, m in masks.items()}}


def test_share_masks_gives_every_rank_rank_zeros_masks_and_masked_weights():
    r0, r1 = run_ranks(random_masks_run, True, world=2)
    assert r0["shared"] == r1["shared"] == ["a", "b", "c"]  # c changed on rank 1 only: still agreed on
    assert r0["again"] == r1["again"] == []  # nothing changed since: one small all-reduce, no broadcast
    assert r1["masks"]["c"] is None and r0["masks"]["c"] is None
    for n in ("a", "b"):
        assert torch.equal(r0["masks"][n], r1["masks"][n]) and torch.equal(r0["params"][n], r1["params"][n])


def test_without_sharing_the_ranks_random_masks_differ():
    r0, r1 = run_ranks(random_masks_run, False, world=2)
    assert not torch.equal(r0["masks"]["a"], r1["masks"]["a"])


PERMANENT_RANDOM = """
version: 1
pruners:
  dropfilter:
    class: BernoulliFilterPruner
    desired_sparsity: 0.5
    group_type: Filters
    weights: [conv2.weight, fc1.weight]
policies:
  - pruner: {instance_name: dropfilter}
    starting_epoch: 0
    ending_epoch: 2
"""


def permanent_random_masks_run():
    """Random filter masks drawn at each epoch's begin and kept (the issue's diverging replicas)."""
    distributed.init_from_env()
    torch.manual_seed(distributed.rank())  # each process draws its own
    model = create_lenet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scheduler = distill_ee.schedule_from_text(model, optimizer, PERMANENT_RANDOM)
    net = distributed.wrap(model, scheduler)
    x, y = data(distributed.rank(), 32)[0]
    for epoch in range(2):
        scheduler.on_epoch_begin(epoch)
        for i in range(2):
            scheduler.on_minibatch_begin(epoch, i, 2)
            loss = nn.functional.cross_entropy(net(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.on_minibatch_end(epoch, i, 2)
        scheduler.on_epoch_end(epoch)
    return {"nnz": sum(int(p.count_nonzero()) for p in model.parameters()),
            "state": {k: v.clone() for k, v in model.state_dict().items()}}


def create_lenet():
    from distill_ee.apputils.models import create_model
    return create_model("lenet_mnist", 10, 1)


def test_random_pruner_masks_stay_identical_across_ranks():
    r0, r1 = run_ranks(permanent_random_masks_run, world=2)
    assert r0["nnz"] == r1["nnz"]
    for name, value in r0["state"].items():
        assert torch.equal(value, r1["state"][name]), name
