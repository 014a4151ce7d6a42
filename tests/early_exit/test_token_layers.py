"""Exits on torchvision's own transformers, each branch one YAML line: ViT's class token, Swin's channel-last
features averaged; real early exit gives the simulated exits, and the ONNX and TorchScript exports exit as
PyTorch does."""
import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.swin_transformer import SwinTransformer

from distill_ee import schedule_from_text
from distill_ee.deploy import MultiExitSession
from distill_ee.early_exit import EarlyExits
from distill_ee.early_exit.export import export_torchscript, load_exported
from distill_ee.early_exit.onnx_export import export_onnx
from distill_ee.early_exit.token_layers import TokenAt, TokenMean

SCHEDULE = """\
version: 1
early_exits:
  exits:
    class: EarlyExit
    exits:
{exits}
policies:
  - early_exit:
      instance_name: exits
    epochs: [0]
"""
VIT_EXITS = """\
      exit1: {attach: encoder.layers.encoder_layer_1, branch: [layernorm, cls_token, linear]}
      exit2: {attach: encoder.layers.encoder_layer_2, branch: [layernorm, cls_token, linear]}"""
SWIN_EXITS = """\
      exit1: {attach: features.1, branch: [layernorm, token_mean, linear]}"""


def vit() -> nn.Module:
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=4, num_heads=2,
                                                 hidden_dim=32, mlp_dim=64, num_classes=10)
    nn.init.normal_(model.heads.head.weight, std=0.5)  # torchvision starts the head at zero: equal logits
    return model


def swin() -> nn.Module:
    return SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[1, 2], window_size=[4, 4],
                           num_classes=10)


CASES = {"vit": (vit, VIT_EXITS), "swin": (swin, SWIN_EXITS)}


@pytest.fixture(scope="module", params=list(CASES))
def attached(request):
    make, exits = CASES[request.param]
    torch.manual_seed(0)
    model = make()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule_from_text(model, optimizer, SCHEDULE.format(exits=exits), example_input=torch.zeros(1, 3, 32, 32))
    return request.param, model.eval(), EarlyExits.of(model)


def inputs(n: int = 40) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(5))


def midpoint_thresholds(multi, x: torch.Tensor, share: float) -> list:
    """Per exit, a threshold half-way between two samples' entropies, ``share`` of them below it."""
    with torch.no_grad():
        entropies = [multi.criteria[0].entropy(z).sort().values for z in multi.simulate(x)[:-1]]
    i = int(share * len(x))
    return [float((h[i - 1] + h[i]) / 2) for h in entropies]


def test_a_one_line_branch_reads_a_token_or_averages_the_tokens(attached):
    name, _, exits = attached
    branches = exits.multi_exit_model().branches
    taker, width = (TokenAt, 32) if name == "vit" else (TokenMean, 16)  # ViT's hidden_dim, Swin's embed_dim
    assert [type(b[1]) for b in branches] == [taker] * len(branches)
    assert all(isinstance(b[0], nn.LayerNorm) and (b[2].in_features, b[2].out_features) == (width, 10)
               for b in branches)


def test_real_early_exit_matches_simulated_exits_on_a_transformer(attached):
    _, model, exits = attached
    multi = exits.multi_exit_model().eval()
    x = inputs()
    multi.set_thresholds(midpoint_thresholds(multi, x, 0.4))
    with torch.no_grad():
        simulated = multi.simulate(x)
        logits, index = multi(x)
        sim_logits, sim_index = multi.decide(multi.simulate(x))
        assert torch.allclose(simulated[-1], model(x), atol=1e-5)
    assert torch.equal(index, sim_index) and torch.allclose(logits, sim_logits, atol=1e-4)
    assert 0 < int((index == 0).sum()) < len(x) and int((index == len(simulated) - 1).sum()) > 0


@pytest.mark.slow
def test_the_onnx_export_of_a_transformer_gives_pytorchs_outputs_and_exits(attached, tmp_path):
    _, model, exits = attached
    multi = exits.multi_exit_model().eval()
    export_onnx(multi, model, tmp_path / "onnx")
    session, x = MultiExitSession(tmp_path / "onnx"), inputs()
    with torch.no_grad():
        want = multi.simulate(x)
    got = session.simulate(x.numpy())
    assert [g.shape for g in got] == [(len(x), 10)] * len(want)
    assert max(float(np.abs(g - w.numpy()).max()) for g, w in zip(got, want)) < 1e-4
    thresholds = midpoint_thresholds(multi, x, 0.4)
    multi.set_thresholds(thresholds)
    session.set_thresholds(thresholds)
    with torch.no_grad():
        want_logits, want_index = multi(x)
    got_logits, got_index = session(x.numpy())
    assert (got_index == want_index.numpy()).all() and 0 < int((got_index == 0).sum()) < len(x)
    assert np.abs(got_logits - want_logits.numpy()).max() < 1e-4


def test_the_torchscript_export_of_a_transformer_exits_as_pytorch_does(attached, tmp_path):
    _, _, exits = attached
    multi = exits.multi_exit_model().eval()
    x = inputs()
    multi.set_thresholds(midpoint_thresholds(multi, x, 0.4))
    export_torchscript(multi, tmp_path)
    with torch.no_grad():
        want_logits, want_index = multi(x)
        got_logits, got_index = load_exported(tmp_path)(x)
    assert torch.equal(got_index, want_index) and 0 < int((got_index == 0).sum()) < len(x)
    assert torch.allclose(got_logits, want_logits, atol=1e-5)
