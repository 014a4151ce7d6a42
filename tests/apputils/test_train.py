"""The app's accuracy counts: one rule for top-1 everywhere (the arg-max, the first of tied classes), and per
class by label."""
import torch
from torch import nn

from distill_ee.apputils.train import accuracy, evaluate


def test_tied_logits_count_for_the_first_tied_class_as_the_arg_max_does():
    logits = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0], [3.0, 0.0, 0.0]])
    labels = torch.tensor([1, 1, 0])
    assert logits.argmax(dim=1).tolist() == [0, 1, 0]
    assert accuracy(logits, labels, (1, 2, 5)) == (2, 3, 3)


def test_top1_agrees_with_the_arg_max_on_int8_like_outputs_full_of_ties():
    torch.manual_seed(0)
    logits = torch.randint(-3, 4, (4000, 10)).float()  # few levels: ties everywhere
    labels = torch.randint(0, 10, (4000,))
    top1, top5 = accuracy(logits, labels)
    assert top1 == int((logits.argmax(dim=1) == labels).sum())
    assert top1 <= top5 <= 4000


def test_evaluate_counts_every_class_by_label():
    class Fixed(nn.Module):
        def forward(self, x):
            return x

    inputs = torch.eye(3)[[0, 1, 2, 2, 0]]  # predicts 0, 1, 2, 2, 0
    labels = torch.tensor([0, 1, 1, 2, 2])
    loader = [(inputs[:3], labels[:3]), (inputs[3:], labels[3:])]
    out = evaluate(Fixed(), loader, nn.CrossEntropyLoss(), torch.device("cpu"), num_classes=3)
    assert out["class_seen"] == [1, 2, 2] and out["class_correct"] == [1, 1, 1]
    assert out["top1"] == 60.0
    assert "class_seen" not in evaluate(Fixed(), loader, nn.CrossEntropyLoss(), torch.device("cpu"))
