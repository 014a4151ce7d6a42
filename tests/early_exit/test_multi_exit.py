"""Real early exit against simulated exits: same predictions, same exits, and later stages really skipped."""
import pytest
import torch
from torch import nn

from distill_ee.early_exit.multi_exit import MultiExitModel
from distill_ee.errors import DistillEEError

CASES = {
    "lenet": ("lenet", ["conv1", "conv2"], (1, 28, 28),
              [{"type": "conv", "out_channels": 4, "kernel_size": 3}, "relu", {"type": "maxpool", "kernel_size": 2},
               "flatten", "linear"]),
    "resnet_cifar": ("resnet_cifar", ["layer1.0", "layer2", "layer3.0.bn2"], (3, 32, 32), None),
    "resnet18": ("resnet18", ["layer1", "layer2.0", "layer3"], (3, 32, 32), None),
}


def build(request, ee, case, criterion="entropy"):
    fixture, attach_points, shape, branch = CASES[case]
    model = request.getfixturevalue(fixture)
    exits = ee.attach(model, ee.exits_config(attach_points, branch=branch), input_shape=shape).exit_set
    multi = MultiExitModel.from_model(model, exits, criterion).eval()
    return model, multi, torch.randn(48, *shape, generator=torch.Generator().manual_seed(7))


def between(values: torch.Tensor, fraction: float) -> float:
    """A threshold half-way between two neighbouring values: ``fraction`` of them lie below it."""
    ordered = values.sort().values
    i = min(max(int(fraction * len(ordered)), 1), len(ordered) - 1)
    return float((ordered[i - 1] + ordered[i]) / 2)


def entropy_thresholds(multi, x, fractions):
    h = [multi.criteria[0].entropy(l) for l in multi.simulate(x)[:-1]]
    return [between(v, f) for v, f in zip(h, fractions)]


def assert_real_matches_simulated(multi, x):
    logits, index = multi(x)
    sim_logits, sim_index = multi.decide(multi.simulate(x))
    assert torch.equal(index, sim_index)
    assert torch.equal(logits.argmax(1), sim_logits.argmax(1))
    assert torch.allclose(logits, sim_logits, atol=1e-4)
    return index


@pytest.mark.parametrize("case", list(CASES))
def test_real_and_simulated_agree_on_predictions_and_exit_counts(request, ee, case):
    _, multi, x = build(request, ee, case)
    for fractions in [(0.3, 0.3, 0.3), (0.0, 0.5, 0.0), (0.1, 0.0, 0.9), (0.0, 0.0, 0.0)]:
        multi.set_thresholds(entropy_thresholds(multi, x, fractions))
        index = assert_real_matches_simulated(multi, x)
        if fractions == (0.3, 0.3, 0.3):
            assert torch.bincount(index, minlength=multi.num_exits + 1).min() > 0  # every exit and the final one taken


@pytest.mark.parametrize("case", list(CASES))
def test_batch_of_one_agrees_with_the_batched_result(request, ee, case):
    _, multi, x = build(request, ee, case)
    multi.set_thresholds(entropy_thresholds(multi, x, (0.25, 0.3, 0.4)))
    logits, index = multi(x)
    for i in range(0, 48, 3):
        one_logits, one_index = multi(x[i:i + 1])
        assert one_index.tolist() == [int(index[i])]
        assert torch.allclose(one_logits, logits[i:i + 1], atol=1e-4)


def test_when_everything_leaves_at_the_first_exit_later_stages_never_run(request, ee):
    model, multi, x = build(request, ee, "resnet_cifar")
    later, branch2 = [], []
    model.layer2.register_forward_hook(lambda *a: later.append(1))
    multi.branches[1].register_forward_hook(lambda *a: branch2.append(1))
    multi.set_thresholds([100.0, 0.5, 0.5])
    logits, index = multi(x)
    assert index.tolist() == [0] * 48
    assert later == [] and branch2 == []
    multi(x[:1])
    assert later == [] and branch2 == []


def test_later_stages_run_only_on_the_samples_that_stayed(request, ee):
    model, multi, x = build(request, ee, "resnet_cifar")
    multi.set_thresholds(entropy_thresholds(multi, x, (0.5, 0.0, 0.0)))
    seen = []
    model.fc.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    _, index = multi(x)
    assert seen == [int((index == 3).sum())] and 0 < seen[0] < 48


def test_an_exit_without_threshold_is_skipped(request, ee):
    _, multi, x = build(request, ee, "lenet")
    calls = []
    multi.branches[0].register_forward_hook(lambda *a: calls.append(1))
    multi.set_thresholds([None, 100.0])
    _, index = multi(x)
    assert calls == [] and index.tolist() == [1] * 48
    assert multi.thresholds == [None, 100.0]


@pytest.mark.parametrize("case", ["resnet_cifar", "resnet18"])
def test_patience_real_and_simulated_agree(request, ee, case):
    _, multi, x = build(request, ee, case, criterion="patience")
    multi.set_thresholds([1, 1, 1])
    index = assert_real_matches_simulated(multi, x)
    assert int((index == 0).sum()) == 0  # the first exit has nothing to agree with


def test_criteria_may_differ_per_exit(request, ee):
    model, _, x = build(request, ee, "resnet_cifar")
    multi = MultiExitModel.from_model(model, model_exits(model), ["max_prob", "margin", "entropy"]).eval()
    probs = [torch.softmax(l, 1) for l in multi.simulate(x)]
    top2 = probs[1].topk(2, 1).values
    multi.set_thresholds([between(probs[0].max(1).values, 0.7), between(top2[:, 0] - top2[:, 1], 0.5), 2.0])
    index = assert_real_matches_simulated(multi, x)
    assert int((index == 0).sum()) > 0 and int((index == 1).sum()) > 0


def model_exits(model):
    return model.early_exits


def test_thresholds_by_name_and_checks(request, ee):
    _, multi, _ = build(request, ee, "lenet")
    multi.set_thresholds({"exit2": 0.7})
    assert multi.thresholds == [None, 0.7]
    multi.set_thresholds([0.1, 0.2, None])  # a trailing None for the final classifier is accepted
    assert multi.thresholds == [0.1, 0.2]
    with pytest.raises(DistillEEError):
        multi.set_thresholds({"exit9": 0.1})
    with pytest.raises(DistillEEError):
        multi.set_thresholds([0.1])


def test_eval_inference_runs_without_autograd(request, ee):
    _, multi, x = build(request, ee, "lenet")
    multi.set_thresholds([0.5, 0.5])
    logits, index = multi(x)
    assert not logits.requires_grad and logits.is_inference()
    assert all(not l.requires_grad for l in multi.simulate(x))
    assert multi.output_names == ["exit1", "exit2", "final"]


def test_stage_and_branch_counts_must_match():
    with pytest.raises(DistillEEError):
        MultiExitModel([nn.Identity()], [nn.Identity()], None, exit_names=["a"])  # type: ignore[arg-type]


def test_channels_last_models_keep_their_layout_through_the_batch_shrink():
    from distill_ee.early_exit.multi_exit import _select_rows

    x = torch.randn(6, 4, 5, 5).contiguous(memory_format=torch.channels_last)
    keep = torch.tensor([0, 3, 4])
    rows = _select_rows(x, keep)
    assert rows.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(rows, x[keep])
    plain = torch.randn(6, 4, 5, 5)
    assert torch.equal(_select_rows(plain, keep), plain[keep])


def test_eval_of_the_multi_exit_model_leaves_the_training_models_modes_alone(ee):
    torch.manual_seed(0)
    model = ee.randomize_bn(ee.ResNetCifar())
    ee.attach(model, ee.exits_config(["layer1", "layer2"]), input_shape=(3, 32, 32))
    from distill_ee.early_exit.exits import EarlyExits
    multi = EarlyExits.of(model).multi_exit_model().eval()
    model.train()  # the user's training loop goes on
    x = torch.randn(8, 3, 32, 32)
    stats = model.bn1.running_mean.clone()
    logits, _ = multi(x)
    multi.simulate(x)
    assert model.training and all(m.training for m in model.modules())  # nothing switched behind the user's back
    assert torch.equal(model.bn1.running_mean, stats)  # inference ran with frozen statistics
    with torch.no_grad():
        model.eval()
        expected = multi.simulate(x)[-1]
        model.train()
    assert torch.allclose(multi.simulate(x)[-1], expected)
