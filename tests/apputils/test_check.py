"""``distill-ee check``: a schedule validated against a model and its resolved plan printed, without training."""
import subprocess
import sys
from pathlib import Path

import pytest

from distill_ee.apputils.check import check
from distill_ee.apputils.cli import main

ROOT = Path(__file__).resolve().parents[2]
SCHEDULES = ROOT / "schedules"


def test_the_plan_lists_policies_epochs_matched_parameters_and_exits():
    text = check(str(SCHEDULES / "lenet_mnist.earlyexit_agp.yaml"), "lenet_mnist", epochs=12)
    assert "valid for --arch lenet_mnist (mnist5k: input (N, 1, 28, 28), 10 classes); 3 policies" in text
    assert "| pruner       | agp        | AutomatedGradualPruner | 1 to 7   | 7 epoch(s): 1..7" in text
    assert "| pruners.agp | conv2.weight      |         1 | conv2.weight |" in text
    assert "| exit1  | pool1                | (N, 20, 12, 12) | entropy     | 0.05" in text
    assert "| final  |" in text


def test_patterns_show_every_parameter_they_matched():
    text = check(str(SCHEDULES / "resnet20_cifar.agp_filters_thinning.yaml"), "resnet20_cifar", "cifar10")
    assert "module.layer3.2.conv1.weight |         1 | layer3.2.conv1.weight" in text
    assert "| exit2  | layer2" in text and "(N, 32, 16, 16)" in text


def test_built_in_classifiers_are_marked_and_offered(tmp_path):
    text = check(str(SCHEDULES / "msdnet_mnist.yaml"), "msdnet_mnist")
    assert "| classifier1 | blocks.0.coarsest (built-in) | (N, 48, 7, 7)" in text
    plain = tmp_path / "lr.yaml"
    plain.write_text("version: 1\nlr_schedulers:\n  lr: {class: ExponentialLR, gamma: 0.9}\npolicies:\n"
                     "  - lr_scheduler: {instance_name: lr}\n    starting_epoch: 0\n    ending_epoch: 5\n"
                     "    frequency: 1\n")
    text = check(str(plain), "ranet_mnist")
    assert ("ranet_mnist declares built-in classifiers (classifier1, classifier2, classifier3); an early_exits "
            "instance takes them with `attach: builtin`") in text


def test_a_bad_schedule_is_one_located_line_and_status_2(capsys):
    assert main(["check", str(ROOT / "tests/schedule/bad/unknown_argument.yaml"), "--arch", "lenet_mnist"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown_argument.yaml:7: pruners.p1.final_sparsty: unknown argument" in err[0]


def test_flag_errors_are_one_line_with_a_hint_to_help(capsys):
    with pytest.raises(SystemExit) as info:
        main(["check", "x.yaml"])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip() == ("distill-ee check: error: one of the arguments -a/--arch --model is "
                                               "required (see distill-ee check --help)")


@pytest.mark.slow
def test_the_command_runs_as_a_module_and_through_compress_classifier():
    for command in ([sys.executable, "-m", "distill_ee"], [sys.executable, str(ROOT / "compress_classifier.py")]):
        out = subprocess.run(command + ["check", str(SCHEDULES / "lenet_mnist.agp.yaml"), "--arch", "lenet_mnist"],
                             capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert out.returncode == 0, out.stderr
        assert "lenet_mnist.agp.yaml: valid for --arch lenet_mnist" in out.stdout
