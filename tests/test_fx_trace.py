"""The one fx tracing policy: torch layers and their subclasses stay whole, torch stacks are traced through to
reach an exit inside them, and tracing leaves no state behind in the user's model."""
from typing import Dict, List

import pytest
import torch
from torch import nn

from distill_ee.early_exit.attach import attach_exits
from distill_ee.early_exit.exits import EarlyExits
from distill_ee.early_exit.spec import parse_early_exit_config
from distill_ee.errors import DistillEEError
from distill_ee.fx_trace import FxTracer, is_torch_leaf, state_kept, trace_graph


def with_exits(model: nn.Module, attach: List[str], input_shape) -> nn.Module:
    """``model`` with a flatten + linear exit after each attach point."""
    exits = {f"exit{i + 1}": {"attach": a, "branch": ["flatten", "linear"]} for i, a in enumerate(attach)}
    attach_exits(model, parse_early_exit_config({"exits": exits}), num_classes=3, input_shape=input_shape)
    return model


def real_matches_simulated(multi, x: torch.Tensor) -> torch.Tensor:
    """The exit index of every sample, after checking real early exit against the simulated one."""
    logits, index = multi(x)
    sim_logits, sim_index = multi.decide(multi.simulate(x))
    assert torch.equal(index, sim_index)
    assert torch.allclose(logits, sim_logits, atol=1e-5)
    return index


def half_leave(multi, x: torch.Tensor) -> List[float]:
    """Entropy thresholds letting about half the samples leave at each exit."""
    return [float(multi.criteria[0].entropy(l).median()) for l in multi.simulate(x)[:-1]]


# --------------------------------------------------------------------------- subclasses of torch layers
class OwnLinear(nn.Linear):
    """Like timm's Linear: a torch layer subclass with its own forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight, self.bias)


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(8, 16), OwnLinear(16, 16), nn.Linear(16, 3)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def test_a_subclass_of_a_torch_layer_is_one_call_module_node():
    graph = trace_graph(Mlp())
    assert [n.target for n in graph.nodes if n.op == "call_module"] == ["fc1", "fc2", "fc3"]
    assert is_torch_leaf(OwnLinear(2, 2)) and not is_torch_leaf(Mlp()) and not is_torch_leaf(nn.Sequential())


def test_a_forward_hook_on_a_torch_layer_subclass_fires_inside_the_multi_exit_model():
    torch.manual_seed(0)
    model = with_exits(Mlp().eval(), ["fc1"], (8,))  # fc2 is no attach point: only the rule keeps it whole
    calls: List[int] = []
    model.fc2.register_forward_hook(lambda m, args, out: calls.append(out.shape[0]))
    x = torch.randn(16, 8)
    with torch.no_grad():
        model(x)
    plain = len(calls)
    multi = EarlyExits.of(model).multi_exit_model().eval()
    calls.clear()
    multi.set_thresholds([0.0])
    with torch.no_grad():
        logits, index = multi(x)
    assert plain == 1 and len(calls) == plain  # fires once per forward, as in the plain model
    assert torch.allclose(logits, model(x), atol=1e-6) and bool((index == 1).all())
    multi.set_thresholds(half_leave(multi, x))
    real_matches_simulated(multi, x)


# --------------------------------------------------------------------------- exits inside torch's stacks
class TokenModel(nn.Module):
    """(N, T, D) float features, projected, a torch TransformerEncoder, the mean over tokens, a linear head."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(6, 16)
        layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=4)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.encoder(self.proj(x)).mean(1))


def test_exits_inside_a_transformer_encoder_trace_through_it_and_keep_its_layers_whole():
    torch.manual_seed(0)
    model = with_exits(TokenModel().eval(), ["encoder.layers.1", "encoder.layers.3"], (5, 6))
    multi = EarlyExits.of(model).multi_exit_model().eval()
    x = torch.randn(32, 5, 6, generator=torch.Generator().manual_seed(3))
    multi.set_thresholds([0.0, 0.0])
    with torch.no_grad():
        logits, index = multi(x)
        assert bool((index == 2).all()) and torch.allclose(logits, model(x), atol=1e-5)
    multi.set_thresholds(half_leave(multi, x))
    index = real_matches_simulated(multi, x)
    assert torch.bincount(index, minlength=3).min() > 0


def test_a_torch_stack_without_an_exit_inside_stays_one_node():
    tracer = FxTracer(through=["proj"])
    graph = trace_graph(TokenModel(), tracer)
    assert [n.target for n in graph.nodes if n.op == "call_module"] == ["proj", "encoder", "head"]


class WholeTransformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Transformer(16, 4, 1, 1, 32, dropout=0.0, batch_first=True)

    def forward(self, x):
        return self.net(x, x).mean(1)


def test_a_torch_module_fx_cannot_trace_through_is_a_located_error():
    model = with_exits(WholeTransformer().eval(), ["net.encoder.layers.0"], (5, 16))
    with pytest.raises(DistillEEError, match=r"in module 'net' \(Transformer\)") as info:
        EarlyExits.of(model).multi_exit_model()
    assert "cannot trace WholeTransformer with torch.fx" in str(info.value)


# --------------------------------------------------------------------------- no state left behind
class CachedBias(nn.Module):
    """Like timm's LeViT attention: in eval mode, a tensor computed from a parameter is cached in a dict."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.biases = nn.Parameter(torch.randn(8, 4))
        self.register_buffer("idx", torch.tensor([0, 2, 1, 3, 0, 1, 2, 3]), persistent=False)
        self.bias_cache: Dict[str, torch.Tensor] = {}

    def bias(self) -> torch.Tensor:
        if self.training:
            return self.biases[:, self.idx].sum(1)
        if "cpu" not in self.bias_cache:
            self.bias_cache["cpu"] = self.biases[:, self.idx].sum(1)
        return self.bias_cache["cpu"]

    def forward(self, x):
        return torch.relu(self.fc(x) + self.bias())


class LevitLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.block1, self.block2, self.head = CachedBias(), CachedBias(), nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.block2(self.block1(x)))


def test_tracing_leaves_no_proxy_in_a_models_cache_and_rebuilding_works():
    torch.manual_seed(0)
    model = with_exits(LevitLike().eval(), ["block1"], (8,))
    blocks = (model.block1, model.block2)
    for block in blocks:
        block.bias_cache.clear()  # as timm's LeViT does on train(): the next eval forward fills it again
    x = torch.randn(24, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = LevitLike.forward(model, x)
    for block in blocks:
        block.bias_cache.clear()
    for _ in range(2):  # built, then rebuilt, each time traced with empty caches
        multi = EarlyExits.of(model).multi_exit_model().eval()
        for block in blocks:  # no fx Proxy: at most what the plain model's own eval forward puts there
            assert all(torch.equal(v, block.biases[:, block.idx].sum(1)) for v in block.bias_cache.values())
        multi.set_thresholds([0.0])
        with torch.no_grad():
            assert torch.allclose(multi(x)[0], expected, atol=1e-6)
        multi.set_thresholds(half_leave(multi, x))
        real_matches_simulated(multi, x)
    with torch.no_grad():
        model(x)
        for block in blocks:
            assert torch.equal(block.bias_cache["cpu"], block.biases[:, block.idx].sum(1))


def test_a_trace_of_a_fresh_model_leaves_its_cache_empty_and_adds_no_attributes():
    model = LevitLike().eval()
    before = {name: set(m.__dict__) for name, m in model.named_modules()}
    trace_graph(model)
    assert model.block1.bias_cache == {} and model.block2.bias_cache == {}
    assert {name: set(m.__dict__) for name, m in model.named_modules()} == before


def test_state_kept_refills_mutated_containers_in_place_and_drops_new_attributes():
    module = CachedBias()
    cache, hooks = module.bias_cache, module._forward_hooks
    with state_kept(module):
        cache["cpu"] = torch.zeros(1)
        module.extra = 1
        module.bias_cache = {"other": torch.ones(1)}
        module.register_forward_hook(lambda m, args, out: None)  # an OrderedDict grows
    assert module.bias_cache is cache and cache == {} and "extra" not in module.__dict__
    assert module._forward_hooks is hooks and len(hooks) == 0
