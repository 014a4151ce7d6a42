"""Differentiable gated exits (Scardapane et al., 2020): the soft-conditional recursion and its cost against a
hand computation, the joint loss with lambda, hard gates taken for real, and gates that never see labels."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import distill_ee
from distill_ee.early_exit.gates import soft_conditional, soft_conditional_loss, soft_ensemble
from support import one_epoch_of_one_step

GATED = """
version: 1
early_exits:
  ee:
    class: EarlyExit
    criterion: gate
    gate: {{loss_weight: {sc}, cost_weight: {lam}}}
    final_loss_weight: {final}
    exits:
      exit1: {{attach: conv1, branch: [adaptive_avgpool, flatten, linear], loss_weight: {w}}}
      exit2: {{attach: conv2, branch: [adaptive_avgpool, flatten, linear], loss_weight: {w}}}
policies:
  - early_exit: {{instance_name: ee}}
    starting_epoch: 0
    ending_epoch: 4
"""


def gated(ee, sc=1.0, lam=0.1, final=1.0, w=0.3):
    torch.manual_seed(0)
    model = ee.LeNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    scheduler = distill_ee.schedule_from_text(model, optimizer, GATED.format(sc=sc, lam=lam, final=final, w=w),
                                              example_input=torch.zeros(1, 1, 28, 28))
    return model, optimizer, scheduler


def test_the_recursion_and_the_cost_of_two_exits_match_a_hand_computation():
    p1, p2, p3 = (torch.tensor([[0.7, 0.3]]), torch.tensor([[0.4, 0.6]]), torch.tensor([[0.1, 0.9]]))
    g1, g2 = torch.tensor([0.8], requires_grad=True), torch.tensor([0.25], requires_grad=True)
    v = [0.2, 0.5, 1.1]
    mixture, cost = soft_conditional([p1, p2, p3], [g1, g2], v)
    inner = 0.25 * p2 + 0.75 * p3  # f^_2
    assert torch.allclose(mixture, 0.8 * p1 + 0.2 * inner)
    assert torch.allclose(cost, torch.tensor([0.8 * 0.2 + 0.2 * (0.25 * 0.5 + 0.75 * 1.1)]))
    loss = -torch.log(mixture[0, 1]) + 0.7 * cost.sum()
    loss.backward()
    # d/dg1 and d/dg2 of -log(f^_1[1]) + 0.7 * y^_1, by hand
    f1 = 0.8 * 0.3 + 0.2 * (0.25 * 0.6 + 0.75 * 0.9)
    y2 = 0.25 * 0.5 + 0.75 * 1.1
    d_g1 = -(0.3 - (0.25 * 0.6 + 0.75 * 0.9)) / f1 + 0.7 * (0.2 - y2)
    d_g2 = -(0.2 * (0.6 - 0.9)) / f1 + 0.7 * 0.2 * (0.5 - 1.1)
    assert g1.grad.item() == pytest.approx(d_g1, rel=1e-5) and g2.grad.item() == pytest.approx(d_g2, rel=1e-5)


def test_a_gate_of_one_takes_that_exit_and_gates_of_zero_the_final_classifier():
    probs = [torch.softmax(torch.randn(5, 3), 1) for _ in range(3)]
    ones, zeros = torch.ones(5), torch.zeros(5)
    mixture, cost = soft_conditional(probs, [ones, zeros], [0.1, 0.4, 1.0])
    assert torch.equal(mixture, probs[0]) and torch.equal(cost, torch.full((5,), 0.1))
    mixture, cost = soft_conditional(probs, [zeros, zeros], [0.1, 0.4, 1.0])
    assert torch.equal(mixture, probs[2]) and torch.equal(cost, torch.ones(5))


def test_the_joint_loss_adds_the_soft_conditional_term_and_lambda_times_the_cost(ee):
    model, optimizer, scheduler = gated(ee, sc=0.7, lam=0.4)
    policy = scheduler.find("early_exit")[0]
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    scheduler.on_epoch_begin(0)
    scheduler.on_minibatch_begin(0, 0, 1)
    out = model(x)
    exits = [model.early_exits[n] for n in ("exit1", "exit2")]
    result = scheduler.before_backward_pass(0, 0, 1, F.cross_entropy(out, y), target=y, return_loss_components=True)
    with torch.no_grad():
        feats = {}
        h1 = model.conv1.register_forward_hook(lambda m, a, o: feats.__setitem__("c1", o))
        h2 = model.conv2.register_forward_hook(lambda m, a, o: feats.__setitem__("c2", o))
        final = model(x)
        h1.remove(), h2.remove()
        logits = [exits[0](feats["c1"]), exits[1](feats["c2"])]
        gates = [model.early_exits.deciders[n](l) for n, l in zip(("exit1", "exit2"), logits)]
        ce, cost = soft_conditional_loss([*logits, final], gates, policy._costs, y)
        joint = F.cross_entropy(final, y) + sum(0.3 * F.cross_entropy(l, y) for l in logits)
    assert float(result.overall_loss.detach()) == pytest.approx(float(joint + 0.7 * ce + 0.4 * cost), rel=1e-5)
    names = [c.name for c in result.loss_components]
    assert names == ["exit1_loss", "exit2_loss", "soft_conditional_loss", "exit_cost"]
    assert policy._costs[0] < policy._costs[1] < 1.0 < policy._costs[2]  # MACs fractions, branches included


def test_lambda_zero_is_plain_soft_ensemble_training(ee):
    model, optimizer, scheduler = gated(ee, sc=1.0, lam=0.0, final=0.0, w=0.0)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    scheduler.on_epoch_begin(0)
    scheduler.on_minibatch_begin(0, 0, 1)
    loss = scheduler.before_backward_pass(0, 0, 1, F.cross_entropy(model(x), y), target=y)
    with torch.no_grad():
        ensemble = distill_ee.EarlyExits.of(model).soft_ensemble(x)
    assert float(loss.detach()) == pytest.approx(float(F.nll_loss(torch.log(ensemble), y)), rel=1e-5)


def test_gates_train_with_the_network(ee):
    model, optimizer, scheduler = gated(ee)
    before = model.early_exits.deciders.exit1.head[1].weight.detach().clone()
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    one_epoch_of_one_step(model, optimizer, scheduler, 0, x, y)
    assert not torch.equal(model.early_exits.deciders.exit1.head[1].weight, before)
    metrics = scheduler.find("early_exit")[0].epoch_metrics()
    assert 0.0 < metrics["expected_cost"] < 1.2  # a share of the backbone's MACs under the soft gates


@pytest.mark.parametrize("batch", [1, 7, 256])
def test_hard_gates_are_taken_for_real_as_simulated(ee, batch):
    model, _, _ = gated(ee)
    with torch.no_grad():  # gates that let some samples out and keep others
        model.early_exits.deciders.exit1.head[1].bias.fill_(-0.2)
        model.early_exits.deciders.exit2.head[1].bias.fill_(0.1)
    multi = distill_ee.EarlyExits.of(model).multi_exit_model().eval()
    x = torch.randn(batch, 1, 28, 28)
    logits, index = multi(x)
    want_logits, want_index = multi.decide(multi.simulate(x))
    assert torch.equal(index, want_index) and torch.allclose(logits, want_logits, atol=1e-6)


def test_gate_decisions_never_see_labels(ee):
    model, _, _ = gated(ee)
    exits = distill_ee.EarlyExits.of(model)
    x = torch.randn(64, 1, 28, 28)
    y = torch.randint(0, 10, (64,))
    rows = exits.evaluate([(x, y)])
    shuffled = exits.evaluate([(x, y[torch.randperm(64)])])
    assert [r["taken_pct"] for r in rows] == [r["taken_pct"] for r in shuffled]


def test_the_soft_ensemble_mixes_every_output_by_its_gate(ee):
    model, _, _ = gated(ee)
    exits = distill_ee.EarlyExits.of(model)
    x = torch.randn(4, 1, 28, 28)
    multi = exits.multi_exit_model().eval()
    with torch.no_grad():
        logits = multi.simulate(x)
        gates = [model.early_exits.deciders[n](l) for n, l in zip(exits.exit_names, logits)]
        want = soft_ensemble(logits, [model.early_exits.deciders[n] for n in exits.exit_names])
        g1, g2 = gates[0].unsqueeze(1), gates[1].unsqueeze(1)
        p = [torch.softmax(l, 1) for l in logits]
        hand = g1 * p[0] + (1 - g1) * (g2 * p[1] + (1 - g2) * p[2])
    assert torch.allclose(exits.soft_ensemble(x), want) and torch.allclose(want, hand, atol=1e-6)
    assert torch.allclose(want.sum(1), torch.ones(4))


def test_gates_are_model_state_restored_with_the_exits(ee, tmp_path):
    model, optimizer, scheduler = gated(ee)
    one_epoch_of_one_step(model, optimizer, scheduler, 0, torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,)))
    distill_ee.save_checkpoint(tmp_path / "c.pth.tar", model)
    fresh = ee.LeNet()
    distill_ee.load_checkpoint(fresh, tmp_path / "c.pth.tar")
    x = torch.randn(16, 1, 28, 28)
    a = distill_ee.EarlyExits.of(model).multi_exit_model().eval()
    b = distill_ee.EarlyExits.of(fresh).multi_exit_model().eval()
    assert torch.equal(a(x)[1], b(x)[1]) and torch.equal(a(x)[0], b(x)[0])
    assert fresh.early_exits.criteria == ["gate", "gate"] and isinstance(fresh.early_exits.deciders, nn.ModuleDict)


def test_exported_gates_decide_as_the_model_does(ee, tmp_path):
    from distill_ee.early_exit.export import export_torchscript, load_exported
    model, _, _ = gated(ee)
    with torch.no_grad():
        model.early_exits.deciders.exit1.head[1].bias.fill_(-0.2)
    multi = distill_ee.EarlyExits.of(model).multi_exit_model().eval()
    written = export_torchscript(multi, tmp_path)
    assert {"decider0.pt", "decider1.pt"} <= {p.name for p in written}
    loaded = load_exported(tmp_path)
    x = torch.randn(32, 1, 28, 28)
    assert torch.equal(loaded(x)[1], multi(x)[1]) and torch.allclose(loaded(x)[0], multi(x)[0], atol=1e-6)


def test_a_resumed_run_ends_where_an_uninterrupted_one_does_gates_included(ee, tmp_path):
    gen = torch.Generator().manual_seed(5)
    data = [(torch.randn(8, 1, 28, 28, generator=gen), torch.randint(0, 10, (8,), generator=gen)) for _ in range(4)]

    def train(model, optimizer, scheduler, epochs):
        for epoch in epochs:
            one_epoch_of_one_step(model, optimizer, scheduler, epoch, *data[epoch])

    whole = gated(ee, lam=0.3)
    train(*whole, range(4))
    first = gated(ee, lam=0.3)
    train(*first, range(2))
    distill_ee.save_checkpoint(tmp_path / "mid.pth.tar", first[0], optimizer=first[1], scheduler=first[2], epoch=1)
    torch.manual_seed(123)  # a fresh process: other random state
    model = ee.LeNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    scheduler = distill_ee.schedule_from_text(model, optimizer, GATED.format(sc=1.0, lam=0.3, final=1.0, w=0.3),
                                              example_input=torch.zeros(1, 1, 28, 28))
    distill_ee.load_checkpoint(model, tmp_path / "mid.pth.tar", optimizer=optimizer, scheduler=scheduler)
    train(model, optimizer, scheduler, range(2, 4))
    a, b = whole[0].state_dict(), model.state_dict()
    assert list(a) == list(b) and any("deciders" in k for k in a)
    for name in a:
        if isinstance(a[name], torch.Tensor):
            assert torch.equal(a[name], b[name]), name


def test_gate_thresholds_calibrate_like_any_threshold(ee):
    from distill_ee.early_exit.calibrate import CalibrationTarget, calibrate_exits
    model, _, _ = gated(ee)
    exits = distill_ee.EarlyExits.of(model)
    gen = torch.Generator().manual_seed(2)
    batches = [(torch.randn(64, 1, 28, 28, generator=gen), torch.randint(0, 10, (64,), generator=gen))]
    result = calibrate_exits(exits, batches, CalibrationTarget("proportions", (0.25, 0.25)))
    assert result.criteria == ["gate", "gate"] and exits.thresholds == result.thresholds
    taken = exits.evaluate(batches)
    assert [round(r["taken_pct"]) for r in taken[:2]] == [25, 25]  # the gates' outputs rank the samples


def test_gates_are_weights_a_pruner_can_name(ee):
    text = GATED.format(sc=1.0, lam=0.1, final=1.0, w=0.3).replace("policies:", """pruners:
  gate_pruner:
    class: SparsityLevelParameterPruner
    levels: {early_exits.deciders.exit1.head.1.weight: 0.5}
policies:
  - pruner: {instance_name: gate_pruner}
    starting_epoch: 0
    ending_epoch: 1""")
    torch.manual_seed(0)
    model = ee.LeNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    scheduler = distill_ee.schedule_from_text(model, optimizer, text, example_input=torch.zeros(1, 1, 28, 28))
    one_epoch_of_one_step(model, optimizer, scheduler, 0, torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,)))
    weight = model.early_exits.deciders.exit1.head[1].weight
    assert int((weight == 0).sum()) == weight.numel() // 2
