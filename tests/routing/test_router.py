"""Routed blocks at inference: real skipping equals the masked reference, and skipped blocks are not computed."""
import pytest
import torch

from distill_ee.dynamic import static_compute
from distill_ee.routing import Routing
from routing_support import INPUT, build, routing_schedule

KINDS = {
    "ffn": ("SkipGates", ""),
    "rnn": ("SkipGates", "    gate: rnn"),
    "blockdrop": ("BlockDrop", "    policy_downsample: 1"),
}


def routed_model(kind, seed=0):
    """An active routing whose decisions differ between samples (random decider weights, no keep bias)."""
    cls, extra = KINDS[kind]
    model, _, _ = build(routing_schedule(cls, extra=extra), seed=seed)
    routing = Routing.of(model).set
    torch.manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in routing.named_parameters():
            if name.endswith("bias") and p.dim() == 1:
                p.zero_()
            elif p.dim() > 1:
                p.normal_(0, 2.0)
    routing.active = True
    return model.eval(), routing


def outputs(model, routing, x, reference):
    routing.reference = reference
    routing.reset_counts()
    routing.counting = True
    try:
        with torch.no_grad():
            return model(x), list(routing.executed)
    finally:
        routing.counting = False
        routing.reference = False


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("batch", [1, 7, 256])
def test_real_skipping_equals_the_masked_reference(kind, batch):
    model, routing = routed_model(kind)
    x = torch.randn(batch, *INPUT, generator=torch.Generator().manual_seed(batch))
    real, executed = outputs(model, routing, x, reference=False)
    masked, _ = outputs(model, routing, x, reference=True)
    torch.testing.assert_close(real, masked, rtol=1e-5, atol=1e-5)
    if batch == 256:  # the decisions really differ between samples, so rows were selected and copied back
        assert any(0 < e < batch for e in executed)


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_batch_gives_each_sample_what_it_gets_alone(kind):
    model, routing = routed_model(kind)
    x = torch.randn(9, *INPUT, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        together = model(x)
        alone = torch.cat([model(x[i:i + 1]) for i in range(9)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


def calls_per_block(model, routing, x):
    calls = {name: 0 for name in routing.block_names}
    hooks = [model.get_submodule(n).conv1.register_forward_hook(
        lambda m, a, o, n=n: calls.__setitem__(n, calls[n] + 1)) for n in routing.block_names]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return calls


def test_a_skipped_block_is_not_called_at_batch_1_nor_when_nobody_keeps_it():
    model, routing = routed_model("ffn")
    with torch.no_grad():
        routing.gates[1].fc2.bias.fill_(-100.0)  # layer1.1: never kept
        routing.gates[0].fc2.bias.fill_(100.0)  # layer1.0: always kept
    for x in (torch.randn(1, *INPUT), torch.randn(16, *INPUT)):
        calls = calls_per_block(model, routing, x)
        assert calls["layer1.1"] == 0 and calls["layer1.0"] == 1


def test_only_the_kept_rows_go_through_a_block():
    model, routing = routed_model("blockdrop")
    routing.batch_strategy = "rows"  # one call per block (the default groups the batch by pattern)
    x = torch.randn(64, *INPUT, generator=torch.Generator().manual_seed(2))
    rows = {}
    hooks = [model.get_submodule(n).conv1.register_forward_hook(
        lambda m, a, o, n=n: rows.__setitem__(n, a[0].shape[0])) for n in routing.block_names]
    _, executed = outputs(model, routing, x, reference=False)
    for h in hooks:
        h.remove()
    for name, count in zip(routing.block_names, executed):
        assert rows.get(name, 0) == count


def test_before_its_first_policy_epoch_and_under_static_compute_every_block_runs():
    model, routing = routed_model("ffn")
    with torch.no_grad():
        for g in routing.gates:
            g.fc2.bias.fill_(-100.0)
    x = torch.randn(4, *INPUT)
    assert all(c == 0 for c in calls_per_block(model, routing, x).values())
    with static_compute(model):
        assert all(c == 1 for c in calls_per_block(model, routing, x).values())
    routing.active = False
    assert all(c == 1 for c in calls_per_block(model, routing, x).values())


@pytest.mark.parametrize("mode", ["soft", "hard", "sample", "greedy"])
def test_training_mixes_each_block_output_with_its_input_by_the_gate(mode):
    model, routing = routed_model("ffn")
    model.train()
    routing.train_mode = mode
    x = torch.randn(8, *INPUT)
    block = model.get_submodule("layer1.1")
    seen = {}
    block.register_forward_pre_hook(lambda m, a: seen.__setitem__("in", a[0]))
    block.register_forward_hook(lambda m, a, o: seen.__setitem__("out", o))
    model(x)
    record = [r for r in routing.trace if r.block == 1][0]
    full = type(block).forward(block, seen["in"])
    g = record.gate.view(-1, 1, 1, 1)
    torch.testing.assert_close(seen["out"], g * full + (1 - g) * seen["in"])
    if mode in ("hard", "sample", "greedy"):
        assert set(record.gate.detach().unique().tolist()) <= {0.0, 1.0}
    assert (record.log_prob is not None) == (mode == "sample")


def test_blockdrops_two_batch_strategies_give_the_same_outputs_and_counts():
    model, routing = routed_model("blockdrop")
    assert routing.batch_strategy == "patterns"
    x = torch.randn(64, *INPUT, generator=torch.Generator().manual_seed(3))
    by_pattern, executed = outputs(model, routing, x, reference=False)
    routing.batch_strategy = "rows"
    by_rows, executed_rows = outputs(model, routing, x, reference=False)
    torch.testing.assert_close(by_pattern, by_rows, rtol=1e-5, atol=1e-5)
    assert executed == executed_rows and any(0 < e < 64 for e in executed)


def test_grouped_by_pattern_each_group_runs_without_its_dropped_blocks():
    model, routing = routed_model("blockdrop")
    x = torch.randn(64, *INPUT, generator=torch.Generator().manual_seed(3))
    _, executed = outputs(model, routing, x, reference=False)
    rows = []
    for name in routing.block_names:
        model.get_submodule(name).conv1.register_forward_hook(lambda m, a, o: rows.append(a[0].shape[0]))
    with torch.no_grad():
        model(x)
    assert sum(rows) == sum(executed)  # no block ran on a row that dropped it


def test_the_speed_measurement_reports_the_oracle_and_leaves_the_routing_as_it_was():
    from distill_ee.routing.stats import measure_routing_speed
    model, routing = routed_model("ffn")
    x = torch.randn(32, *INPUT, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        before = model(x)
    r = measure_routing_speed(model, x, 8, repeats=2)
    assert r["batch_size"] == 8 and r["samples"] == 32 and len(r["rates"]) == routing.num_blocks
    assert r["real_vs_oracle"] > 0 and r["oracle"] == pytest.approx(r["real_vs_oracle"] * r["routed"])
    assert r["speedup"] == pytest.approx(r["backbone"] / r["routed"])
    assert not routing.skip_all and not routing.counting and routing.dynamic
    with torch.no_grad():
        torch.testing.assert_close(model(x), before)


def test_skip_all_passes_every_routed_block_over():
    model, routing = routed_model("ffn")
    routing.skip_all = True
    x = torch.randn(4, *INPUT)
    assert all(c == 0 for c in calls_per_block(model, routing, x).values())
