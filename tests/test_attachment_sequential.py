"""Models that run their own children (``nn.Sequential``, an ``nn.ModuleList`` subclass, a forward over
``self.children()``) take exits and quantization like any model: the attachment is held beside their layers,
so they never run or count it, while its weights still train, move, save and load with the model."""
import copy
from typing import Any, Dict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distill_ee.attachment import attachments
from distill_ee.checkpoint import load_checkpoint, save_checkpoint
from distill_ee.early_exit.exits import EarlyExits
from distill_ee.policies.base import HookContext
from distill_ee.policies.early_exit import EarlyExitPolicy
from distill_ee.quantization import collect_stats
from distill_ee.quantization.quantset import detach_quantization, quantization_of
from distill_ee.schedule import schedule_from_text

SHAPE = (1, 12, 12)
PTQ = """
quantizers:
  post_train_quantizer:
    class: PostTrainLinearQuantizer
    bits_activations: 8
    bits_parameters: 8
    bits_accum: 32
    mode: ASYMMETRIC_UNSIGNED
    per_channel_wts: True
"""


def sequential_cnn() -> nn.Sequential:
    """conv, relu, pool, conv, relu, flatten, linear."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 8, 3), nn.ReLU(),
                         nn.Flatten(), nn.Linear(8 * 3 * 3, 10))


class ClassCNN(nn.Module):
    """The same network as ``sequential_cnn`` written as a module class."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 4, 3), nn.Conv2d(4, 8, 3)
        self.fc = nn.Linear(8 * 3 * 3, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        return self.fc(torch.flatten(F.relu(self.conv2(x)), 1))


class LayerList(nn.ModuleList):
    """A ModuleList whose forward runs each of its layers in turn."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x)
        return x


class ChildrenNet(nn.Module):
    """A module whose forward runs ``self.children()`` in turn."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.relu, self.pool = nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2)
        self.flatten, self.fc = nn.Flatten(), nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for child in self.children():
            x = child(x)
        return x


def exits_config(attach: str = "2", threshold: float = 1.5) -> Dict[str, Any]:
    return {"exits": {"e1": {"attach": attach, "branch": ["adaptive_avgpool", "flatten", "linear"],
                             "loss_weight": 0.5, "threshold": threshold}}}


def with_exits(model: nn.Module, attach: str = "2") -> EarlyExits:
    return EarlyExits.from_config(exits_config(attach), model, num_classes=10, input_shape=SHAPE, name="branchy")


def batch(n: int = 16, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, *SHAPE, generator=gen), torch.randint(0, 10, (n,), generator=gen)


def test_a_sequential_with_exits_runs_counts_and_indexes_its_own_layers_only():
    model = sequential_cnn()
    layers = list(model)
    with_exits(model)
    assert list(model) == layers and len(model) == 7 and model[-1] is layers[-1]
    assert model[1:3][0] is layers[1] and len(model[1:3]) == 2
    x, _ = batch()
    with torch.no_grad():
        assert model(x).shape == (16, 10)
    assert attachments(model) == [model.early_exits]
    assert "early_exits" in dict(model.named_children())


def test_the_exit_head_trains_with_the_sequential():
    model = sequential_cnn()
    exits = with_exits(model)
    policy = EarlyExitPolicy(exits)
    policy.set_window(0, 5, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    assert {id(p) for p in exits.branch_parameters()} <= {id(p) for p in model.parameters()}
    x, y = batch()
    ctx = HookContext(epoch=0, model=model)
    policy.on_epoch_begin(ctx)
    ctx.loss, ctx.target = F.cross_entropy(model(x), y), y
    loss = policy.before_backward_pass(ctx).overall_loss
    before = [p.detach().clone() for p in exits.branch_parameters()]
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in exits.branch_parameters())
    optimizer.step()
    assert all(not torch.equal(a, p) for a, p in zip(before, exits.branch_parameters()))


def test_a_sequential_exits_early_for_real_at_inference():
    model = sequential_cnn().eval()
    exits = with_exits(model)
    x, _ = batch(100)
    multi = exits.multi_exit_model().eval()
    with torch.no_grad():
        logits = multi.simulate(x)
        entropy = -(logits[0].softmax(1) * logits[0].log_softmax(1)).sum(1)
        exits.set_thresholds([float(entropy.sort().values[49:51].mean())])
        multi = exits.multi_exit_model().eval()
        want, want_index = multi.decide(multi.simulate(x))
        got, got_index = multi(x)
        assert torch.allclose(logits[-1], model(x))
    assert torch.equal(got_index, want_index) and torch.allclose(got, want)
    assert 0 < int((got_index == 0).sum()) < 100


def test_the_exits_move_change_mode_and_copy_with_the_sequential():
    model = sequential_cnn()
    exits = with_exits(model)
    model.eval()
    assert not exits.exit_set.training
    model.double()
    assert all(p.dtype == torch.float64 for p in exits.branch_parameters())
    twin = copy.deepcopy(model)
    x, _ = batch()
    with torch.no_grad():
        assert len(twin) == 7 and torch.equal(twin(x.double()), model(x.double()))
    assert [k for k in twin.state_dict()] == [k for k in model.state_dict()]


def test_a_sequential_checkpoint_keeps_the_exit_keys_and_loads_into_a_fresh_sequential(tmp_path):
    model = sequential_cnn()
    with_exits(model)
    keys = list(model.state_dict())
    assert [k for k in keys if k.startswith("early_exits.")] and keys[:6] == [
        "0.weight", "0.bias", "3.weight", "3.bias", "6.weight", "6.bias"]
    with torch.no_grad():
        for p in model.early_exits.parameters():
            p.add_(1.0)
    save_checkpoint(tmp_path / "ckpt.pth", model)
    fresh = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 8, 3), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * 3 * 3, 10))
    restored = load_checkpoint(fresh, tmp_path / "ckpt.pth")
    assert len(fresh) == 7 and list(fresh.state_dict()) == keys
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values())
               if isinstance(a, torch.Tensor))
    exits = next(r for r in restored.replayed if isinstance(r, EarlyExits))
    x, _ = batch()
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
        assert torch.equal(exits.multi_exit_model().eval().simulate(x)[0],
                           EarlyExits(model).multi_exit_model().eval().simulate(x)[0])


def test_detaching_the_exits_gives_back_the_plain_sequential():
    model = sequential_cnn()
    x, _ = batch()
    with torch.no_grad():
        want = model(x)
    with_exits(model).detach()
    assert type(model._modules) is dict and len(model) == 7
    assert not model._forward_hooks and not model._forward_pre_hooks
    assert not any(k.startswith("early_exits") for k in model.state_dict())
    with torch.no_grad():
        assert torch.equal(model(x), want)


def quantize(model: nn.Module, x: torch.Tensor) -> None:
    scheduler = schedule_from_text(model, torch.optim.SGD(model.parameters(), lr=0.1), PTQ,
                                   example_input=torch.zeros(1, *SHAPE), file="ptq.yaml")
    scheduler.components["quantizers"]["post_train_quantizer"].quantize(stats=collect_stats(model, [x]))


def test_a_quantized_sequential_matches_the_same_network_written_as_a_class():
    model, twin = sequential_cnn(), ClassCNN()
    twin.load_state_dict({new: model.state_dict()[old] for new, old in zip(
        ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "fc.weight", "fc.bias"],
        ["0.weight", "0.bias", "3.weight", "3.bias", "6.weight", "6.bias"])})
    x, _ = batch(64)
    quantize(model, x)
    quantize(twin, x)
    assert quantization_of(model).layers == ["0", "3", "6"] and len(model) == 7
    with torch.no_grad():
        got, want = model(x), twin(x)
    assert (got - want).abs().max() <= 1e-6
    assert any(k.startswith("quantization.") for k in model.state_dict())
    detach_quantization(model)
    assert type(model._modules) is dict and "forward" not in model[0].__dict__


def test_a_quantized_sequential_with_exits_keeps_both_beside_its_layers():
    model = sequential_cnn()
    with_exits(model)
    x, _ = batch(64)
    quantize(model, x)
    assert len(model) == 7 and {type(a).__name__ for a in attachments(model)} == {"ExitSet", "QuantizationSet"}
    with torch.no_grad():
        assert model(x).shape == (64, 10)
    detach_quantization(model)
    assert len(model) == 7 and model.early_exits is not None
    with torch.no_grad():
        assert model(x).shape == (64, 10)


@pytest.mark.parametrize("make, attach", [
    (lambda: LayerList([nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 10)]),
     "1"),
    (ChildrenNet, "relu"),
], ids=["modulelist_subclass", "forward_over_children"])
def test_a_model_that_runs_its_own_children_takes_exits_and_quantization(make, attach):
    torch.manual_seed(0)
    model = make()
    x, _ = batch(64)
    with torch.no_grad():
        want = model(x)
    exits = with_exits(model, attach)
    quantize(model, x)
    quantization_of(model).active = False
    with torch.no_grad():
        assert torch.equal(model(x), want)
        assert torch.allclose(exits.multi_exit_model().eval().simulate(x)[-1], want)
    assert "early_exits" in dict(model.named_children())
    detach_quantization(model)
    exits.detach()
    assert type(model._modules) is dict and not attachments(model)
