"""compress_classifier.py --kd-*: a teacher from a project checkpoint (its exits restored), Distiller's flags."""
import argparse
import json
from pathlib import Path

import pytest
import torch

from distill_ee.apputils.app import main
from distill_ee.apputils.kd import make_teacher
from distill_ee.apputils.models import create_model
from distill_ee.checkpoint import load_checkpoint
from distill_ee.early_exit.exits import EarlyExits

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
BASE = ["--arch", "lenet_mnist", "--epochs", "1", "-b", "128", "--lr", "0.02", "--seed", "0", "--deterministic",
        "--no-timing", "-p", "1000"]


@pytest.fixture(scope="module")
def teacher_checkpoint(tmp_path_factory):
    """A lenet with an exit and AGP pruning, one epoch: a teacher whose checkpoint carries structure steps."""
    out = tmp_path_factory.mktemp("teacher")
    schedule = ROOT / "schedules" / "lenet_mnist.earlyexit_agp.yaml"
    assert main([*BASE, "--compress", str(schedule), "-o", str(out), "-n", "t"]) == 0
    return next(out.glob("t___*")) / "checkpoint.pth.tar"


def test_the_teacher_restores_its_own_structure_from_the_checkpoint(teacher_checkpoint):
    args = argparse.Namespace(kd_teacher="lenet_mnist", kd_pretrained=False, kd_resume=str(teacher_checkpoint),
                              skip_checksum=False)
    x = torch.randn(4, 1, 28, 28)
    teacher = make_teacher(args, 10, 1, x, torch.device("cpu"))
    assert EarlyExits.of(teacher) is not None
    reference = create_model("lenet_mnist", num_classes=10, in_channels=1)
    load_checkpoint(reference, teacher_checkpoint)
    with torch.no_grad():
        torch.testing.assert_close(teacher.eval()(x), reference.eval()(x))


def test_a_student_trains_with_the_teacher_and_reports_it(teacher_checkpoint, tmp_path):
    args = [*BASE, "--kd-teacher", "lenet_mnist", "--kd-resume", str(teacher_checkpoint), "--kd-temperature", "4",
            "--kd-distill-wt", "0.7", "--kd-student-wt", "0.3", "-o", str(tmp_path), "-n", "s"]
    assert main(args) == 0
    run = next(tmp_path.glob("s___*"))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["kd"] == {"teacher": "lenet_mnist", "teacher_checkpoint": str(teacher_checkpoint),
                             "temperature": 4.0, "distill_weight": 0.7, "student_weight": 0.3, "start_epoch": 0}
    header, row = (run / "metrics.csv").read_text().splitlines()[:2]
    assert float(dict(zip(header.split(","), row.split(",")))["train_distillation_loss"]) > 0


def test_a_teacher_checkpoint_of_another_architecture_is_refused(teacher_checkpoint, tmp_path, capsys):
    args = [*BASE, "--kd-teacher", "resnet20_cifar", "--kd-resume", str(teacher_checkpoint), "-o", str(tmp_path)]
    assert main(args) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: --kd-resume {teacher_checkpoint}: checkpoint is for --arch 'lenet_mnist', not "
                      "--kd-teacher 'resnet20_cifar'"]
    assert not list(tmp_path.iterdir())
