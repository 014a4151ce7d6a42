"""timm's own definitions, when timm is installed (``pip install timm``; skipped otherwise): LeViT's eval cache
left untouched by tracing, EfficientNet's BatchNormAct2d and squeeze-and-excite thinned exactly with an exit,
and ``distill-ee check --model timm:NAME``."""
import copy

import pytest
import torch
from torch import nn

import distill_ee
from distill_ee.apputils.cli import main
from distill_ee.thinning import build_dependency_graph, remove_filters
from support import randomize_batch_norms

timm = pytest.importorskip("timm")

EXIT = """\
version: 1
early_exits:
  b:
    class: EarlyExit
    exits:
      e1: {{attach: {attach}, branch: {branch}, threshold: 2.0}}
policies:
  - early_exit: {{instance_name: b}}
    starting_epoch: 0
    ending_epoch: 1
"""


def with_exit(model: nn.Module, attach: str, branch: str, x: torch.Tensor) -> nn.Module:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    distill_ee.schedule_from_text(model, optimizer, EXIT.format(attach=attach, branch=branch), example_input=x[:2])
    return model


def attention_caches(model: nn.Module) -> list:
    return [m.attention_bias_cache for m in model.modules() if hasattr(m, "attention_bias_cache")]


def test_levits_eval_cache_is_left_as_the_model_keeps_it_and_the_exit_model_rebuilds():
    torch.manual_seed(0)
    model = timm.create_model("levit_128s", pretrained=False, num_classes=10, img_size=64).eval()
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with_exit(model, "stages.0", "[token_mean, linear]", x)
    cached = [v for cache in attention_caches(model) for v in cache.values()]
    assert all(type(v) is torch.Tensor for v in cached)  # what LeViT's own eval forward caches, never a Proxy
    first = distill_ee.EarlyExits.of(model).multi_exit_model().eval()
    with torch.no_grad():
        logits, index = first(x)
        sim_logits, sim_index = first.decide(first.simulate(x))
        again = distill_ee.EarlyExits.of(model).multi_exit_model().eval()(x)
    assert torch.equal(index, sim_index) and torch.allclose(logits, sim_logits, atol=1e-4)
    assert torch.allclose(again[0], logits, atol=1e-5) and torch.equal(again[1], index)


def test_efficientnets_norm_activations_and_squeeze_excite_thin_exactly_with_an_exit():
    torch.manual_seed(0)
    model = timm.create_model("efficientnet_b0", pretrained=False, num_classes=10)
    randomize_batch_norms(model)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with_exit(model, "blocks.2", "[adaptive_avgpool, flatten, linear]", x)
    conv = model.blocks[3][0].conv_pw
    modules = dict(model.named_modules())
    with torch.no_grad():  # what training with those filters masked leaves: zero channels up to the SE product
        conv.weight[:16] = 0
        for name in build_dependency_graph(model).producer_group("blocks.3.0.conv_pw").per_channel:
            if isinstance(modules[name], nn.BatchNorm2d):  # timm's BatchNormAct2d: norm + SiLU
                modules[name].bias[:16] = 0
                modules[name].running_mean[:16] = 0
    dense = copy.deepcopy(model).eval()
    remove_filters(model)
    assert conv.out_channels == 240 - 16 and model.blocks[3][0].conv_dw.groups == 240 - 16
    assert model.blocks[3][0].se.conv_reduce.in_channels == 240 - 16  # timm's SE: x.mean((2, 3), keepdim=True)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), dense(x), rtol=1e-5, atol=1e-5)


def test_check_takes_a_timm_name(tmp_path, capsys):
    schedule = tmp_path / "s.yaml"
    schedule.write_text(EXIT.format(attach="blocks.2", branch="[adaptive_avgpool, flatten, linear]"))
    assert main(["check", str(schedule), "--model", "timm:efficientnet_b0", "--model-args", '{"num_classes": 10}',
                 "--input-shape", "3,64,64"]) == 0
    out = capsys.readouterr().out
    assert "blocks.2" in out and "(N, 40, 8, 8)" in out
