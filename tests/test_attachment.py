"""The attachment protocol: a new kind is one subclass and its registration, and the framework does the rest.

A toy kind defined here (a learnable constant added to one layer's output) is attached from a YAML schedule,
saved and restored into a fresh model by the checkpoint's structure steps, left out of the backbone's
parameters, and detached again, with nothing of the core changed for it. The built-in kinds (exits, routing,
quantization) go through the same calls.
"""
from typing import Any, Dict, List, Mapping

import pytest
import torch
from torch import nn

from distill_ee import load_schedule, save_checkpoint, structure_steps
from distill_ee.arguments import ModuleName
from distill_ee.attachment import (Attachment, attach, attachment_of, attachments, backbone_parameters, detach,
                                   register_attachment, unregister_attachment)
from distill_ee.checkpoint import load_checkpoint
from distill_ee.components import load_components
from distill_ee.errors import AttachmentError, CheckpointError, ScheduleError
from distill_ee.registry import EXTENSIONS


class AddConstant(Attachment):
    """Adds a learnable constant to the output of one layer."""

    kind = "add_constant"
    attribute = "add_constant"

    def __init__(self, layer: ModuleName, value: float = 1.0, name: str = ""):
        super().__init__()
        self.layer = layer
        self.instance_name = name
        self.offset = nn.Parameter(torch.tensor(float(value)))

    def install(self, model: nn.Module) -> List[Any]:
        return [model.get_submodule(self.layer).register_forward_hook(lambda m, args, out: out + self.offset)]

    def step_config(self) -> Dict[str, Any]:
        return {"layer": self.layer}

    @classmethod
    def from_step(cls, model: nn.Module, step: Mapping[str, Any]) -> "AddConstant":
        return cls(str(step["layer"]), name=str(step.get("name", "")))


class Net(nn.Module):
    """conv1 -> relu -> flatten -> fc on 1x6x6 inputs."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 2, 3)
        self.relu = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(2 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(self.flatten(self.relu(self.conv1(x))))


SCHEDULE = """
version: 1
extensions:
  plus:
    class: AddConstant
    layer: conv1
    value: 0.5
"""


@pytest.fixture
def toy_kind():
    """The toy kind registered as an attachment and as an extension a schedule may name, for one test."""
    load_components()
    register_attachment(AddConstant)
    EXTENSIONS.add("AddConstant", AddConstant)
    try:
        yield AddConstant
    finally:
        EXTENSIONS.remove("AddConstant")
        unregister_attachment("add_constant")


def scheduled(tmp_path, text=SCHEDULE):
    torch.manual_seed(0)
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "s.yaml"
    path.write_text(text)
    scheduler = load_schedule(model, optimizer, str(path), example_input=torch.zeros(1, 1, 6, 6))
    return model, optimizer, scheduler


def test_a_new_kind_is_attached_from_yaml_and_changes_the_forward_pass(toy_kind, tmp_path):
    model, optimizer, _ = scheduled(tmp_path)
    plus = attachment_of(model, "add_constant")
    assert isinstance(plus, AddConstant) and plus.instance_name == "plus" and float(plus.offset.detach()) == 0.5
    assert structure_steps(model) == [{"kind": "add_constant", "name": "plus", "layer": "conv1"}]
    assert any(p is plus.offset for group in optimizer.param_groups for p in group["params"])
    x = torch.randn(4, 1, 6, 6)
    with torch.no_grad():
        expected = model.fc(model.flatten(model.relu(model.conv1._conv_forward(x, model.conv1.weight,
                                                                                  model.conv1.bias) + 0.5)))
        assert torch.allclose(model(x), expected)


def test_it_is_checkpointed_and_restored_into_a_fresh_model(toy_kind, tmp_path):
    model, optimizer, scheduler = scheduled(tmp_path)
    with torch.no_grad():
        model.add_constant.offset.fill_(2.25)
    save_checkpoint(tmp_path / "c.pth.tar", model, optimizer=optimizer, scheduler=scheduler)
    fresh = Net()
    restored = load_checkpoint(fresh, tmp_path / "c.pth.tar")
    (rebuilt,) = restored.replayed
    assert rebuilt is attachment_of(fresh, AddConstant) and float(rebuilt.offset.detach()) == 2.25
    x = torch.randn(3, 1, 6, 6)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


def test_its_parameters_are_not_the_backbones(toy_kind, tmp_path):
    model, _, _ = scheduled(tmp_path)
    names = [n for n, _ in backbone_parameters(model)]
    assert names == ["conv1.weight", "conv1.bias", "fc.weight", "fc.bias"]
    assert attachments(model) == [model.add_constant]


def test_detaching_removes_its_hook_its_module_and_its_step(toy_kind, tmp_path):
    model, _, _ = scheduled(tmp_path)
    x = torch.randn(2, 1, 6, 6)
    removed = detach(model, "add_constant")
    assert isinstance(removed, AddConstant) and not hasattr(model, "add_constant")
    assert structure_steps(model) == [] and not model.conv1._forward_hooks
    with torch.no_grad():
        assert torch.allclose(model(x), Net.forward(model, x))


def test_a_second_attachment_of_the_same_kind_is_refused(toy_kind, tmp_path):
    model, _, _ = scheduled(tmp_path)
    with pytest.raises(AttachmentError, match="already has add_constant 'plus'"):
        attach(model, AddConstant("fc"))


def test_its_arguments_are_checked_like_any_components(toy_kind, tmp_path):
    with pytest.raises(ScheduleError, match=r"s.yaml:\d+: extensions.plus.layer: no module named 'conv9'.*"
                                            r"did you mean 'conv1'"):
        scheduled(tmp_path, SCHEDULE.replace("conv1", "conv9"))
    with pytest.raises(ScheduleError, match=r"extensions.plus.vlaue: unknown argument of AddConstant"):
        scheduled(tmp_path, SCHEDULE.replace("value", "vlaue"))


def test_a_checkpoint_of_a_kind_that_is_not_installed_says_so(toy_kind, tmp_path):
    model, optimizer, scheduler = scheduled(tmp_path)
    save_checkpoint(tmp_path / "c.pth.tar", model)
    unregister_attachment("add_constant")
    try:
        with pytest.raises(CheckpointError, match="unknown structure step kind 'add_constant'.*plugin"):
            load_checkpoint(Net(), tmp_path / "c.pth.tar")
    finally:
        register_attachment(AddConstant)


def test_a_kind_must_name_its_kind_and_attribute():
    class Nameless(Attachment):
        pass

    with pytest.raises(TypeError, match="kind"):
        register_attachment(Nameless)


def test_an_unregistered_kind_is_not_attached():
    class Stray(Attachment):
        kind = attribute = "stray"

    with pytest.raises(AttachmentError, match="not a registered attachment kind"):
        attach(Net(), Stray())


def test_attaching_after_wrapping_in_ddp_is_refused():
    class FakeDDP(nn.Module):
        wraps_module = True

        def __init__(self, module):
            super().__init__()
            self.module = module

    load_components()
    from distill_ee.quantization.quantset import LayerSettings, QuantizationSet

    with pytest.raises(AttachmentError, match="before wrapping the model in DistributedDataParallel"):
        attach(FakeDDP(Net()), QuantizationSet({"conv1": LayerSettings()}))


PACT = """
version: 1
quantizers:
  pact:
    class: PACTQuantizer
    bits_activations: 4
    bits_weights: 4
policies:
  - quantizer: {instance_name: pact}
    starting_epoch: 1
    ending_epoch: 2
"""


def test_pacts_clipping_values_are_not_backbone_parameters(tmp_path):
    model, optimizer, scheduler = scheduled(tmp_path, PACT)
    qset = attachment_of(model, "quantization")
    assert qset is not None and len(list(qset.parameters())) == 2
    backbone = {id(p) for _, p in backbone_parameters(model)}
    assert not any(id(p) in backbone for p in qset.parameters())
    assert [n for n, _ in backbone_parameters(model)] == ["conv1.weight", "conv1.bias", "fc.weight", "fc.bias"]


def test_pacts_clipping_values_are_idle_until_the_quantizer_runs(tmp_path):
    from distill_ee.attachment import idle_parameters

    model, optimizer, scheduler = scheduled(tmp_path, PACT)
    qset = attachment_of(model, "quantization")
    assert {id(p) for p in idle_parameters(model, scheduler.policies)} == {id(p) for p in qset.parameters()}
    scheduler.on_epoch_begin(1)
    assert idle_parameters(model, scheduler.policies) == []


def test_the_built_in_kinds_are_attachments_of_the_same_protocol(tmp_path):
    load_components()
    from distill_ee.registry import ATTACHMENTS

    assert ATTACHMENTS.names() == ["early_exits", "quantization", "routing"]
    for kind in ATTACHMENTS.names():
        cls = ATTACHMENTS.get(kind)
        assert issubclass(cls, Attachment) and cls.kind == kind and cls.attribute
