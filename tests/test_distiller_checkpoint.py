"""Distiller checkpoints load safely: their own names admitted and never run, anything else refused in one line;
the weights, masks, optimizer state and thinning come over, and the model evaluates as the one Distiller saved.

The files are written the way Distiller's ``save_checkpoint`` writes them, with stand-ins registered under
Distiller's module names (Distiller itself is not needed)."""
import json
import os
import shlex
import sys
import types
from collections import namedtuple

import numpy as np
import pytest
import torch

from distill_ee import structure_steps
from distill_ee.apputils.app import main
from distill_ee.apputils.models import create_model
from distill_ee.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from distill_ee.errors import CheckpointError
from distill_ee.scheduler import CompressionScheduler

MNIST_INPUT = (1, 28, 28)


@pytest.fixture
def distiller(monkeypatch, tmp_path):
    """Modules named as Distiller's, holding its ThinningRecipe and a quantizer class, as torch.save pickles them."""
    thinning = types.ModuleType("distiller.thinning")
    thinning.ThinningRecipe = namedtuple("ThinningRecipe", ["modules", "parameters"], module="distiller.thinning")
    range_linear = types.ModuleType("distiller.quantization.range_linear")
    marker = tmp_path / "distiller_code_ran"

    class PostTrainLinearQuantizer:
        """Writes a marker file whenever it is built: loading must never build it."""

        def __new__(cls, *args):
            marker.write_text("ran")
            return super().__new__(cls)

        def __reduce__(self):
            return (type(self), (8,))

    PostTrainLinearQuantizer.__module__ = range_linear.__name__
    PostTrainLinearQuantizer.__qualname__ = "PostTrainLinearQuantizer"
    range_linear.PostTrainLinearQuantizer = PostTrainLinearQuantizer
    for module in (types.ModuleType("distiller"), types.ModuleType("distiller.quantization"), thinning,
                   range_linear):
        monkeypatch.setitem(sys.modules, module.__name__, module)
    return types.SimpleNamespace(ThinningRecipe=thinning.ThinningRecipe, Quantizer=PostTrainLinearQuantizer,
                                 marker=marker)


def save_like_distiller(path, model, arch, *, recipes=(), masks=None, optimizer=None, extras=None, **more):
    """Distiller's save_checkpoint of a DataParallel model: 'module.' names, masks_dict, recipes, extras."""
    checkpoint = {"epoch": 4, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
                  "arch": arch, "is_parallel": True, "dataset": "mnist" if "mnist" in arch else "cifar10"}
    if optimizer is not None:
        checkpoint["optimizer_state_dict"] = optimizer.state_dict()
        checkpoint["optimizer_type"] = type(optimizer)
    if masks is not None:
        checkpoint["compression_sched"] = {"masks_dict": {f"module.{n}": masks.get(n)
                                                          for n, _ in model.named_parameters()}}
    if recipes:
        checkpoint["thinning_recipes"] = [type(r)({f"module.{k}": v for k, v in r.modules.items()},
                                                  {f"module.{k}": v for k, v in r.parameters.items()})
                                          for r in recipes]
    checkpoint["extras"] = extras or {}
    checkpoint.update(more)
    torch.save(checkpoint, path)
    return path


@torch.no_grad()
def thin_like_distiller(model, recipe):
    """What Distiller's execute_thinning_recipe does to ``model`` (module attributes, BN statistics, parameters)."""
    modules = dict(model.named_modules())
    for name, directives in recipe.modules.items():
        for attr, value in directives.items():
            if attr in ("running_mean", "running_var"):
                setattr(modules[name], attr, getattr(modules[name], attr).index_select(value[0], value[1]))
            else:
                setattr(modules[name], attr, value)
    params = dict(model.named_parameters())
    for name, directives in recipe.parameters.items():
        for directive in directives:
            param = params[name]
            if len(directive) == 4:
                param.data = param.view(*directive[2]).index_select(directive[0], directive[1]) \
                    .reshape(*directive[3])
            else:
                param.data = param.data.index_select(directive[0], directive[1])
    return model


def simplenet_recipes(recipe_type):
    """Filters of conv2 removed (fc1's inputs follow, through Distiller's 4-D view), then filters of conv1."""
    conv2_kept = torch.tensor(sorted(torch.randperm(50)[:30].tolist()))
    conv1_kept = torch.tensor(sorted(torch.randperm(20)[:12].tolist()))
    return [
        recipe_type(modules={"conv2": {"out_channels": 30}, "fc1": {"in_features": 480}},
                    parameters={"conv2.weight": [(0, conv2_kept)], "conv2.bias": [(0, conv2_kept)],
                                "fc1.weight": [(1, conv2_kept, (500, 50, 4, 4), (500, 480))]}),
        recipe_type(modules={"conv1": {"out_channels": 12}, "conv2": {"in_channels": 12}},
                    parameters={"conv1.weight": [(0, conv1_kept)], "conv1.bias": [(0, conv1_kept)],
                                "conv2.weight": [(1, conv1_kept)]}),
    ]


def resnet_recipe(recipe_type):
    """Filters of layer1.0.conv1 removed: its BatchNorm (weights and running statistics) and conv2 follow."""
    kept = torch.tensor([0, 2, 3, 5, 7, 8, 11, 12, 14, 15])
    return recipe_type(
        modules={"layer1.0.conv1": {"out_channels": 10}, "layer1.0.conv2": {"in_channels": 10},
                 "layer1.0.bn1": {"num_features": 10, "running_mean": (0, kept), "running_var": (0, kept)}},
        parameters={"layer1.0.conv1.weight": [(0, kept)], "layer1.0.bn1.weight": [(0, kept)],
                    "layer1.0.bn1.bias": [(0, kept)], "layer1.0.conv2.weight": [(1, kept)]})


def trained_model(arch, in_channels):
    torch.manual_seed(0)
    model = create_model(arch, 10, in_channels)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    return model.eval()


def same_outputs(a, b, shape):
    x = torch.randn(4, *shape)
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


def test_a_plain_distiller_checkpoint_evaluates_as_the_model_saved(distiller, tmp_path):
    source = trained_model("simplenet_mnist", 1)
    path = save_like_distiller(tmp_path / "distiller.pth.tar", source, "simplenet_mnist")
    fresh = create_model("simplenet_mnist", 10, 1)
    restored = load_checkpoint(fresh, path)
    assert same_outputs(fresh, source, MNIST_INPUT)
    assert restored.epoch == 4 and restored.get("arch") == "simplenet_mnist"
    assert restored.get("converted_from") == "distiller"


def test_thinning_recipes_are_replayed_on_a_fresh_model_before_its_weights_load(distiller, tmp_path):
    source = trained_model("simplenet_mnist", 1)
    recipes = simplenet_recipes(distiller.ThinningRecipe)
    for recipe in recipes:
        thin_like_distiller(source, recipe)
    path = save_like_distiller(tmp_path / "thinned.pth.tar", source, "simplenet_mnist", recipes=recipes)
    fresh = create_model("simplenet_mnist", 10, 1)
    load_checkpoint(fresh, path)
    assert (fresh.conv1.out_channels, fresh.conv2.in_channels, fresh.conv2.out_channels) == (12, 12, 30)
    assert fresh.fc1.weight.shape == (500, 480) and fresh.fc1.in_features == 480
    assert same_outputs(fresh, source, MNIST_INPUT)
    assert [step["kind"] for step in structure_steps(fresh)] == ["thinning", "thinning"]


def test_thinning_shrinks_batchnorm_weights_and_running_statistics(distiller, tmp_path):
    source = trained_model("resnet20_cifar", 3)
    recipe = resnet_recipe(distiller.ThinningRecipe)
    thin_like_distiller(source, recipe)
    path = save_like_distiller(tmp_path / "resnet.pth.tar", source, "resnet20_cifar", recipes=[recipe])
    fresh = create_model("resnet20_cifar", 10, 3)
    load_checkpoint(fresh, path)
    bn = dict(fresh.named_modules())["layer1.0.bn1"]
    assert bn.num_features == 10 and torch.equal(bn.running_var, source.layer1[0].bn1.running_var)
    assert same_outputs(fresh, source, (3, 32, 32))


def test_a_converted_checkpoint_saves_and_reloads_as_this_projects_own(distiller, tmp_path):
    source = trained_model("simplenet_mnist", 1)
    recipes = simplenet_recipes(distiller.ThinningRecipe)
    for recipe in recipes:
        thin_like_distiller(source, recipe)
    converted = create_model("simplenet_mnist", 10, 1)
    load_checkpoint(converted, save_like_distiller(tmp_path / "d.pth.tar", source, "simplenet_mnist",
                                                   recipes=recipes))
    save_checkpoint(tmp_path / "own.pth.tar", converted, arch="simplenet_mnist")
    again = create_model("simplenet_mnist", 10, 1)
    load_checkpoint(again, tmp_path / "own.pth.tar")
    assert same_outputs(again, source, MNIST_INPUT)


def test_masks_and_optimizer_state_come_over(distiller, tmp_path):
    source = trained_model("simplenet_mnist", 1)
    optimizer = torch.optim.SGD(source.parameters(), lr=0.1, momentum=0.9)
    source(torch.randn(2, *MNIST_INPUT)).sum().backward()
    optimizer.step()
    mask = (source.conv2.weight.abs() > source.conv2.weight.abs().median()).float()
    path = save_like_distiller(tmp_path / "masked.pth.tar", source, "simplenet_mnist",
                               masks={"conv2.weight": mask}, optimizer=optimizer)
    fresh = create_model("simplenet_mnist", 10, 1)
    scheduler = CompressionScheduler(fresh)
    fresh_optimizer = torch.optim.SGD(fresh.parameters(), lr=1.0, momentum=0.9)
    load_checkpoint(fresh, path, scheduler=scheduler, optimizer=fresh_optimizer)
    assert torch.equal(scheduler.zeros_mask_dict["conv2.weight"].mask, mask)
    assert scheduler.zeros_mask_dict["conv1.weight"].mask is None
    assert fresh_optimizer.param_groups[0]["lr"] == 0.1
    assert torch.equal(fresh_optimizer.state[fresh.conv2.weight]["momentum_buffer"],
                       optimizer.state[source.conv2.weight]["momentum_buffer"])
    assert read_checkpoint(path)["optimizer_type"] == "torch.optim.sgd.SGD"


def test_distillers_numpy_figures_in_extras_become_numbers(distiller, tmp_path):
    extras = {"best_top1": np.float64(97.5), "current_top1": np.float64(97.25), "best_epoch": 3}
    path = save_like_distiller(tmp_path / "e.pth.tar", trained_model("simplenet_mnist", 1), "simplenet_mnist",
                               extras=extras)
    state = read_checkpoint(path)
    assert state["best_top1"] == 97.5 and type(state["best_top1"]) is float
    assert state["extras"] == {"best_top1": 97.5, "current_top1": 97.25, "best_epoch": 3}


def test_a_checkpoint_of_a_model_distiller_quantized_is_refused_saying_what_to_do(distiller, tmp_path):
    path = save_like_distiller(tmp_path / "q.pth.tar", trained_model("simplenet_mnist", 1), "simplenet_mnist",
                               quantizer_metadata={"type": distiller.Quantizer, "params": {"bits_weights": 8},
                                                   "dummy_input": torch.zeros(1, *MNIST_INPUT)})
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert "quantized by distiller.quantization.range_linear.PostTrainLinearQuantizer" in message
    assert "from before quantization" in message and "--quantize-eval" in message


def test_distiller_classes_a_checkpoint_names_are_never_built(distiller, tmp_path):
    instance = distiller.Quantizer()  # building one writes the marker: loading must not
    distiller.marker.unlink()
    path = save_like_distiller(tmp_path / "named.pth.tar", trained_model("simplenet_mnist", 1), "simplenet_mnist",
                               extras={"quantizer": instance, "best_epoch": 2})
    state = read_checkpoint(path)
    assert not distiller.marker.exists()
    assert state["extras"] == {"best_epoch": 2}


class RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


class RunsPython:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w')",))


@pytest.mark.parametrize("payload, forbidden", [(RunsShell, "system"), (RunsPython, "builtins.eval")])
def test_a_checkpoint_that_would_run_code_is_refused_in_one_line_and_nothing_runs(distiller, tmp_path, payload,
                                                                                   forbidden):
    marker = tmp_path / "pwned"
    path = save_like_distiller(tmp_path / "evil.pth.tar", trained_model("simplenet_mnist", 1), "simplenet_mnist",
                               recipes=simplenet_recipes(distiller.ThinningRecipe)[:1],
                               extras={"best_top1": payload(marker)})
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(create_model("simplenet_mnist", 10, 1), path)
    message = str(err.value)
    assert message.startswith(f"{path}: refused to load") and "\n" not in message
    assert forbidden in message and "is not allowed" in message
    assert not marker.exists()


def test_a_damaged_distiller_checkpoint_is_one_line(distiller, tmp_path):
    whole = save_like_distiller(tmp_path / "whole.pth.tar", trained_model("simplenet_mnist", 1), "simplenet_mnist",
                                recipes=simplenet_recipes(distiller.ThinningRecipe)[:1])
    truncated = tmp_path / "truncated.pth.tar"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(truncated)
    assert str(err.value).startswith(f"{truncated}: not a readable PyTorch checkpoint") and "\n" not in str(err.value)


def test_a_recipe_that_does_not_fit_the_model_names_the_recipe_and_tensor(distiller, tmp_path):
    source = trained_model("simplenet_mnist", 1)
    recipe = distiller.ThinningRecipe(modules={}, parameters={"conv9.weight": [(0, torch.tensor([0, 1]))]})
    path = save_like_distiller(tmp_path / "odd.pth.tar", source, "simplenet_mnist", recipes=[recipe])
    with pytest.raises(CheckpointError, match=r"Distiller thinning recipe 1 of 1: it thins 'conv9.weight', which "
                                              r"the model lacks"):
        load_checkpoint(create_model("simplenet_mnist", 10, 1), path)


# --------------------------------------------------------------------------- the sample app
def evaluate_in_app(checkpoint, out, name):
    args = ["--arch", "simplenet_mnist", "--resume-from", str(checkpoint), "--evaluate", "--no-timing",
            "-o", str(out), "-n", name, "--seed", "3"]
    assert main(args) == 0
    run = next(out.glob(f"{name}___*"))
    return json.loads((run / "summary.json").read_text()), (run / f"{name}.log").read_text()


@pytest.mark.slow
def test_the_app_evaluates_a_thinned_distiller_checkpoint_as_the_same_model_saved_here(distiller, tmp_path):
    source = trained_model("simplenet_mnist", 1)
    recipes = simplenet_recipes(distiller.ThinningRecipe)
    for recipe in recipes:
        thin_like_distiller(source, recipe)
    path = save_like_distiller(tmp_path / "distiller.pth.tar", source, "simplenet_mnist", recipes=recipes)
    own = create_model("simplenet_mnist", 10, 1)
    load_checkpoint(own, path)
    save_checkpoint(tmp_path / "own.pth.tar", own, arch="simplenet_mnist", epoch=4)
    from_distiller, log = evaluate_in_app(path, tmp_path / "runs", "distiller")
    from_own, _ = evaluate_in_app(tmp_path / "own.pth.tar", tmp_path / "runs", "own")
    assert "a Distiller checkpoint, converted (8 weights, 0 masks, 2 thinning recipes, epoch 4)" in log
    assert from_distiller["top1"] == from_own["top1"] and from_distiller["params_nnz"] == from_own["params_nnz"]


def test_the_app_refuses_a_distiller_checkpoint_that_would_run_code_with_status_2(distiller, tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = save_like_distiller(tmp_path / "evil.pth.tar", trained_model("simplenet_mnist", 1), "simplenet_mnist",
                               extras={"x": RunsShell(marker)})
    args = ["--arch", "simplenet_mnist", "--resume-from", str(path), "--evaluate", "-o", str(tmp_path / "runs")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refused to load" in err[0] and "system" in err[0]
    assert not marker.exists()
