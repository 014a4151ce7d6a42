"""The distillation loss against a hand computation."""
import math

import pytest
import torch

from distill_ee.distillation import distillation_loss


def test_the_loss_is_t_squared_times_the_kl_of_the_softened_distributions():
    student = torch.tensor([[1.0, 2.0, 0.0]])
    teacher = torch.tensor([[0.0, 3.0, 1.0]])
    T = 2.0

    def softmax(v):
        e = [math.exp(x / T) for x in v]
        return [x / sum(e) for x in e]

    p, q = softmax(teacher[0].tolist()), softmax(student[0].tolist())
    kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    assert float(distillation_loss(student, teacher, T)) == pytest.approx(T * T * kl, rel=1e-6)


def test_the_loss_is_a_batch_mean_zero_for_equal_logits_and_gives_no_gradient_to_the_teacher():
    student = torch.randn(4, 5, requires_grad=True)
    teacher = torch.randn(4, 5, requires_grad=True)
    assert float(distillation_loss(teacher.detach(), teacher, 3.0)) == pytest.approx(0.0, abs=1e-6)
    rows = [float(distillation_loss(student[i:i + 1], teacher[i:i + 1], 3.0).detach()) for i in range(4)]
    assert float(distillation_loss(student, teacher, 3.0).detach()) == pytest.approx(sum(rows) / 4, rel=1e-5)
    distillation_loss(student, teacher, 3.0).backward()
    assert student.grad is not None and teacher.grad is None
