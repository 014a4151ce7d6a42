"""Knowledge distillation: Distiller's loss mix, a frozen teacher in eval mode, and self-distillation of exits."""
import copy

import pytest
import torch
from torch import nn

from distill_ee.distillation import distillation_loss
from distill_ee.errors import ConfigError
from distill_ee.policies.knowledge_distillation import DistillationLossWeights, KnowledgeDistillationPolicy
from distill_ee.scheduler import CompressionScheduler
from routing_support import INPUT, TinyRes, build
from support import one_epoch_of_one_step


@pytest.fixture
def data():
    gen = torch.Generator().manual_seed(2)
    return torch.randn(16, *INPUT, generator=gen), torch.randint(0, 4, (16,), generator=gen)


def kd_setup(temperature=3.0, weights=DistillationLossWeights(0.7, 0.3)):
    torch.manual_seed(0)
    student, teacher = TinyRes(), TinyRes()
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05)
    scheduler = CompressionScheduler(student, optimizer)
    policy = KnowledgeDistillationPolicy(student, teacher, temperature, weights)
    scheduler.add_policy(policy, starting_epoch=0, ending_epoch=3)
    return student, teacher, optimizer, scheduler


def test_the_loss_is_the_student_weight_times_its_loss_plus_the_distill_weight_times_the_term(data):
    x, y = data
    student, teacher, _, scheduler = kd_setup()
    teacher.train()  # the policy runs it in eval mode whatever mode it is in
    scheduler.on_epoch_begin(0)
    scheduler.on_minibatch_begin(0, 0, 1)
    out = student(x)
    ce = nn.functional.cross_entropy(out, y)
    loss = scheduler.before_backward_pass(0, 0, 1, ce, target=y)
    with torch.no_grad():
        expected_teacher = copy.deepcopy(teacher).eval()(x)
    torch.testing.assert_close(loss, 0.3 * ce + 0.7 * distillation_loss(out, expected_teacher, 3.0))
    assert teacher.training  # its own mode is given back


def test_the_teacher_stays_as_it_was_weights_and_batch_norm_statistics(data):
    x, y = data
    student, teacher, optimizer, scheduler = kd_setup()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    for epoch in range(3):
        student.train()
        one_epoch_of_one_step(student, optimizer, scheduler, epoch, x, y)
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())
    assert not any(p.requires_grad for p in teacher.parameters())
    assert scheduler.policies[0].epoch_metrics()["distillation_loss"] > 0


def test_a_trained_teacher_or_bad_weights_are_refused():
    with pytest.raises(ConfigError, match="teacher is frozen"):
        kd_setup(weights=DistillationLossWeights(0.5, 0.5, 0.2))
    with pytest.raises(ConfigError, match="temperature must be above 0"):
        kd_setup(temperature=0.0)
    with pytest.raises(ConfigError, match="loss weights must be >= 0"):
        kd_setup(weights=DistillationLossWeights(-1.0, 0.5))


EXITS = """
version: 1
early_exits:
  exits:
    class: EarlyExit
    distillation: {temperature: 2.0, weight: 0.4, teacher: TEACHER}
    exits:
      exit1:
        attach: layer1.1
        branch: [{type: adaptive_avgpool, output_size: 1}, flatten, {type: linear}]
        threshold: 0.5
        loss_weight: 0.3
policies:
  - early_exit: {instance_name: exits}
    starting_epoch: 0
    ending_epoch: 4
"""


def first_loss(model, scheduler, x, y):
    scheduler.on_epoch_begin(0)
    model.train()
    scheduler.on_minibatch_begin(0, 0, 1)
    return scheduler.before_backward_pass(0, 0, 1, nn.functional.cross_entropy(model(x), y), target=y,
                                          return_loss_components=True)


def test_self_distillation_from_the_final_classifier_adds_weight_times_the_term_per_exit(data):
    x, y = data
    model, _, scheduler = build(EXITS.replace("TEACHER", "final"))
    captured = {}
    model.early_exits.exit1.register_forward_hook(lambda m, a, o: captured.__setitem__("exit", o))
    result = first_loss(model, scheduler, x, y)
    term = [c.value for c in result.loss_components if c.name == "self_distillation"][0]
    with torch.no_grad():
        final = model(x)
    model.train()
    expected = 0.4 * distillation_loss(captured["exit"], final, 2.0)
    torch.testing.assert_close(term, expected, rtol=1e-4, atol=1e-5)


def test_a_frozen_teacher_is_a_snapshot_taken_when_the_policy_starts_and_survives_a_checkpoint(data, tmp_path):
    from distill_ee.checkpoint import load_checkpoint, save_checkpoint
    x, y = data
    text = EXITS.replace("TEACHER", "frozen")
    model, optimizer, scheduler = build(text)
    with torch.no_grad():
        start = copy.deepcopy(model).eval()(x)
    for epoch in range(2):
        model.train()
        one_epoch_of_one_step(model, optimizer, scheduler, epoch, x, y)
    policy = scheduler.policies[0]
    with torch.no_grad():
        torch.testing.assert_close(policy._teacher(x), start)  # it did not learn with the model
    save_checkpoint(tmp_path / "sd.pth", model, optimizer=optimizer, scheduler=scheduler,
                    rng_state=torch.get_rng_state())
    torch.manual_seed(0)
    for epoch in range(2, 4):
        model.train()
        one_epoch_of_one_step(model, optimizer, scheduler, epoch, x, y)
    uninterrupted = {k: v.clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    model, optimizer, scheduler = build(text, seed=5)
    load_checkpoint(model, tmp_path / "sd.pth", optimizer=optimizer, scheduler=scheduler)
    torch.manual_seed(0)
    for epoch in range(2, 4):
        model.train()
        one_epoch_of_one_step(model, optimizer, scheduler, epoch, x, y)
    resumed = model.state_dict()
    assert all(torch.equal(v, resumed[k]) for k, v in uninterrupted.items())


@pytest.mark.parametrize("block, message", [
    ("{temperature: 0}", "distillation.temperature: the temperature must be above 0"),
    ("{teacher: oracle}", "distillation.teacher: 'oracle' is not a teacher"),
    ("{weight: -1}", "distillation.weight"),
    ("{temprature: 2}", "distillation.temprature: unknown key"),
])
def test_a_bad_distillation_block_is_a_located_error(block, message):
    from distill_ee.errors import ScheduleError
    text = EXITS.replace("{temperature: 2.0, weight: 0.4, teacher: TEACHER}", block)
    with pytest.raises(ScheduleError) as err:
        build(text)
    assert str(err.value).startswith("routing.yaml:") and message in str(err.value)
