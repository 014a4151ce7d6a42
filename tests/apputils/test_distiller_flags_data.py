"""Distiller's data and logging flags of the sample app: the dataset inferred from the architecture, the
effective split sizes, the best scores, -v, the masks' sparsity, the confusion matrix, activation statistics and
histograms, and parameter histograms; each with its bad input refused in one line before training."""
import csv
import json
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from distill_ee.apputils.app import main
from distill_ee.apputils.args import parse_args
from distill_ee.apputils.datasets import load_dataset, make_loaders
from distill_ee.apputils.datasets.effective import PortionLoader, effective_splits, train_portion
from distill_ee.apputils.datasets.from_arch import dataset_from_arch, resolve_dataset
from distill_ee.apputils.distiller_logs import (ActivationStats, BestScores, activation_histograms,
                                                append_param_histograms, confusion_pass, masks_sparsity_table)
from distill_ee.apputils.models import create_model
from .test_data import write_mnist

HINT = "(see compress_classifier.py --help)"


def run(argv, capsys, out):
    """Exit status, stderr, and the run directory (None when none was made)."""
    code = main([*argv, "-o", str(out), "--no-timing", "-p", "1000"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    runs = sorted(Path(out).glob("*___*")) if Path(out).exists() else []
    return code, err, runs[-1] if runs else None


@pytest.fixture(scope="module")
def splits():
    return load_dataset("mnist5k", valid_size=0.1)


# --------------------------------------------------------------------------- flags as Distiller spells them
@pytest.mark.parametrize("flag", ["--validation-split", "--valid-size", "--vs"])
def test_validation_split_and_its_aliases_set_the_same_share(flag):
    assert parse_args([flag, "0.25"]).valid_size == 0.25


def test_distiller_short_names_set_the_same_flags():
    args = parse_args(["--etrs", "0.5", "--evs", "0.25", "--etes", "0.125", "--act-stats", "train", "test",
                       "--act-hist", "0.1", "-v"])
    assert (args.effective_train_size, args.effective_valid_size, args.effective_test_size) == (0.5, 0.25, 0.125)
    assert args.activation_stats == ["train", "test"] and args.activation_histograms == 0.1 and args.verbose


def test_defaults_change_nothing():
    args = parse_args([])
    assert (args.effective_train_size, args.effective_valid_size, args.effective_test_size) == (1.0, 1.0, 1.0)
    assert args.num_best_scores == 1 and args.activation_stats == [] and args.activation_histograms is None
    assert not (args.verbose or args.masks_sparsity or args.confusion or args.param_hist)


@pytest.mark.parametrize("argv, message", [
    (["--validation-split", "1"], "argument --validation-split/--valid-size/--vs: must be in [0, 1), got 1"),
    (["--etrs", "0"], "argument --effective-train-size/--etrs: must be a portion in (0, 1], got 0"),
    (["--evs", "1.5"], "argument --effective-valid-size/--evs: must be a portion in (0, 1], got 1.5"),
    (["--etes", "nan"], "argument --effective-test-size/--etes: must be a portion in (0, 1], got nan"),
    (["--etes", "half"], "argument --effective-test-size/--etes: invalid _portion value: 'half'"),
    (["--act-hist", "-0.1"], "argument --activation-histograms/--act-hist: must be a portion in (0, 1], got -0.1"),
    (["--act-stats", "training"], "argument --activation-stats/--act-stats: invalid choice: 'training' (choose "
                                  "from 'train', 'valid', 'test')"),
    (["--act-stats"], "argument --activation-stats/--act-stats: expected at least one argument"),
    (["--num-best-scores", "two"], "argument --num-best-scores: invalid int value: 'two'"),
])
def test_malformed_values_are_one_argparse_line(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert capsys.readouterr().err.strip() == f"compress_classifier.py: error: {message} {HINT}"


@pytest.mark.parametrize("argv, message", [
    (["--num-best-scores", "0"], "--num-best-scores must be at least 1 and at most 10000, got 0"),
    (["--vs", "0", "--evs", "0.5"],
     "--effective-valid-size/--evs applies to the validation split, and --vs 0 leaves none"),
    (["--vs", "0", "--act-stats", "valid"], "--activation-stats valid: --vs 0 leaves no validation split"),
    (["--act-hist", "0.1", "--sense", "filter"],
     "--activation-histograms and --sense each run alone and exit: choose one"),
    (["--act-hist", "0.1", "--act-stats", "train"],
     "--activation-stats train acts in each training epoch, and --activation-histograms trains none"),
    (["--evaluate", "--resume-from", "x.pth.tar", "--param-hist"],
     "--param-hist acts in each training epoch, and --evaluate trains none"),
    (["--evaluate", "--resume-from", "x.pth.tar", "--masks-sparsity"],
     "--masks-sparsity acts in each training epoch, and --evaluate trains none"),
    (["--etrs", "0.0001"], "--effective-train-size/--etrs 0.0001 keeps no sample of the 3,600 training images "
                           "(floor(3600 x 0.0001) = 0); give at least 0.00028"),
    (["--etes", "0.0005"], "--effective-test-size/--etes 0.0005 keeps no sample of the 1,000 test images "
                           "(floor(1000 x 0.0005) = 0); give at least 0.001"),
    (["--evs", "0.001"], "--effective-valid-size/--evs 0.001 keeps no sample of the 400 validation images "
                         "(floor(400 x 0.001) = 0); give at least 0.0025"),
])
def test_values_no_run_can_use_are_one_line_before_any_output(argv, message, capsys, tmp_path):
    code, err, run_dir = run(argv, capsys, tmp_path / "runs")
    assert code == 2 and err == f"error: {message}\n"
    assert run_dir is None and not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------- the dataset from the architecture
@pytest.mark.parametrize("arch, dataset", [("resnet20_cifar", "cifar10"), ("lenet_mnist", "mnist"),
                                           ("resnet18", "imagenet")])
def test_distillers_rule_names_the_dataset_of_an_architecture(arch, dataset):
    assert dataset_from_arch(arch) == dataset


def test_a_named_dataset_or_no_directory_needs_no_inference(tmp_path):
    assert resolve_dataset("cifar10", str(tmp_path), "lenet_mnist") == ("cifar10", None)
    assert resolve_dataset(None, None, "resnet20_cifar") == ("mnist5k", None)


@pytest.mark.slow
def test_a_dataset_dir_without_dataset_trains_on_the_inferred_dataset(capsys, tmp_path):
    write_mnist(tmp_path / "digits" / "MNIST" / "raw", n_train=60, n_test=20)
    code, err, run_dir = run([str(tmp_path / "digits"), "--epochs", "1", "-b", "32"], capsys, tmp_path / "runs")
    assert code == 0, err
    assert "No --dataset given: dataset 'mnist' inferred from --arch lenet_mnist" in err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["dataset"] == "mnist"
    assert torch.load(run_dir / "checkpoint.pth.tar", weights_only=True)["dataset"] == "mnist"


def test_an_inferred_dataset_that_is_not_there_says_it_was_inferred(capsys, tmp_path):
    code, err, _ = run([str(tmp_path), "--arch", "resnet20_cifar"], capsys, tmp_path / "runs")
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: dataset 'cifar10': CIFAR-10 batch files not found")
    assert err.endswith("(no --dataset given: 'cifar10' was inferred from --arch resnet20_cifar; give --dataset to "
                        "choose another)\n")


# --------------------------------------------------------------------------- effective sizes
def test_validation_and_test_portions_are_fixed_subsets_chosen_by_the_seed(splits):
    cut = effective_splits(splits, 0.25, 0.1, seed=7)
    again = effective_splits(splits, 0.25, 0.1, seed=7)
    other = effective_splits(splits, 0.25, 0.1, seed=8)
    assert (len(cut.valid), len(cut.test)) == (100, 100)
    assert torch.equal(cut.test.images, again.test.images) and torch.equal(cut.valid.targets, again.valid.targets)
    assert not torch.equal(cut.test.images, other.test.images)
    assert cut.test.classes == splits.test.classes and cut.train is splits.train


def test_a_whole_portion_keeps_the_split_itself(splits):
    cut = effective_splits(splits, 1.0, 1.0, seed=0)
    assert cut.valid is splits.valid and cut.test is splits.test


def epoch_targets(loader, seed, epoch):
    loader.generator.manual_seed(seed * 1000 + epoch)
    return torch.cat([t for _, t in loader])


def test_the_training_portion_is_drawn_anew_each_epoch_and_again_under_the_seed(splits):
    train = train_portion(make_loaders(splits, 64, seed=3)[0], 0.05)
    assert isinstance(train, PortionLoader) and train.count == 180 and len(train) == 3
    first, second = epoch_targets(train, 3, 0), epoch_targets(train, 3, 1)
    assert len(first) == 180 and not torch.equal(first, second)
    assert torch.equal(first, epoch_targets(train, 3, 0))


# --------------------------------------------------------------------------- the logs, one by one
def test_best_scores_rank_fewer_nonzero_weights_first_then_top1():
    model = nn.Linear(4, 2, bias=False)
    best = BestScores(2)
    best.step(model, None, 0, 50.0, 80.0)
    best.step(model, None, 1, 70.0, 90.0)
    with torch.no_grad():
        model.weight[0].zero_()
    best.step(model, None, 2, 60.0, None)
    assert best.lines() == ["==> Best [Top1: 60.000   Top5: -   Sparsity:50.00   NNZ-Params: 4 on epoch: 2]",
                            "==> Best [Top1: 70.000   Top5: 90.000   Sparsity:0.00   NNZ-Params: 8 on epoch: 1]"]


class Masker:
    def __init__(self, mask):
        self.mask = mask


def test_masks_sparsity_counts_the_masked_off_share_of_each_weight():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    mask = torch.ones(4, 4)
    mask[:2] = 0
    table = masks_sparsity_table(model, {"0.weight": Masker(mask), "1.weight": Masker(None)})
    rows = {line.split("|")[1].strip(): float(line.split("|")[2]) for line in table.splitlines()[3:-1]}
    assert rows == {"0.weight": 50.0, "1.weight": 0.0, "Total sparsity:": 25.0}


class Constant(nn.Module):
    """Predicts class 1 for every input."""

    def forward(self, x):
        return torch.tensor([[0.0, 1.0, 0.0]]).expand(len(x), 3)


def test_the_confusion_matrix_has_a_row_per_true_class_and_a_column_per_prediction():
    loader = [(torch.zeros(3, 1), torch.tensor([0, 1, 2])), (torch.zeros(2, 1), torch.tensor([2, 2]))]
    matrix = confusion_pass(Constant(), loader, torch.device("cpu"), 3, None)
    assert matrix.tolist() == [[0, 1, 0], [0, 1, 0], [0, 3, 0]]


def test_activation_stats_read_relu_outputs_and_conv_records():
    model = create_model("lenet_mnist", num_classes=10, in_channels=1).eval()
    images = torch.randn(8, 1, 28, 28)
    with ActivationStats(model, "test") as stats, torch.no_grad():
        model(images)
    with torch.no_grad():
        relu1 = torch.relu(model.conv1(images))
    summary = stats.summary()
    assert set(summary) == {"relu1", "relu2", "relu3"} and set(stats.records) == {"conv1", "conv2"}
    assert summary["relu1"]["samples"] == 8 and summary["relu1"]["shape"] == [20, 24, 24]
    assert summary["relu1"]["sparsity_ofm"] == pytest.approx(100.0 * float((relu1 == 0).float().mean()), abs=1e-4)
    assert summary["relu1"]["l1_channels"][0] == pytest.approx(float(relu1[:, 0].abs().sum() / 8), rel=1e-4)
    assert len(summary["relu1"]["apoz_channels"]) == 20 and len(stats.records["conv1"]["rows"]) == 8
    assert not model.conv1._forward_hooks


@pytest.mark.slow
def test_activation_histograms_count_every_value_of_every_layer(tmp_path):
    model = create_model("lenet_mnist", num_classes=10, in_channels=1)
    loader = [(torch.randn(4, 1, 28, 28), torch.zeros(4, dtype=torch.long))]
    paths = activation_histograms(model, loader, torch.device("cpu"), tmp_path, bins=16)
    assert [p.name for p in paths] == ["activation_histograms.csv", "activation_histograms.png"]
    totals = {}
    with open(paths[0]) as fh:
        for row in csv.DictReader(fh):
            key = (row["module"], row["tensor"])
            totals[key] = totals.get(key, 0) + int(row["count"])
    assert totals[("conv1", "input0")] == 4 * 28 * 28 and totals[("fc2", "output")] == 4 * 10
    assert model.training


def test_parameter_histograms_are_appended_once_per_epoch(tmp_path):
    model = nn.Linear(3, 2)
    path = tmp_path / "param_histograms.csv"
    append_param_histograms(model, 0, path, bins=4)
    append_param_histograms(model, 1, path, bins=4)
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    counts = {}
    for row in rows:
        counts[(row["epoch"], row["parameter"])] = counts.get((row["epoch"], row["parameter"]), 0) + int(row["count"])
    assert counts == {("0", "weight"): 6, ("0", "bias"): 2, ("1", "weight"): 6, ("1", "bias"): 2}


# --------------------------------------------------------------------------- the app with every flag
@pytest.mark.slow
def test_a_run_with_the_logging_flags_logs_and_writes_what_distiller_does(capsys, tmp_path):
    code, err, run_dir = run(["--epochs", "2", "--seed", "0", "--etrs", "0.02", "--evs", "0.25", "--etes", "0.1",
                              "--num-best-scores", "2", "-v", "--masks-sparsity", "--confusion",
                              "--act-stats", "train", "valid", "test", "--param-hist"], capsys, tmp_path)
    assert code == 0, err
    assert "Dataset sizes: training=72 per epoch (of 3600) validation=100 test=100" in err
    assert err.count("Masks sparsity after epoch") == 2 and err.count("Weights sparsity after epoch") == 2
    best = [line for line in err.splitlines() if line.startswith("==> Best [")]
    assert len(best) == 1 + 2 and best[-1].endswith(("on epoch: 0]", "on epoch: 1]"))
    assert "==> Confusion (test split, the model's output):" in err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert sum(map(sum, summary["confusion"])) == 100
    assert sum(summary["confusion"][i][i] for i in range(10)) == round(summary["top1_final_exit"])
    for phase in ("train", "valid", "test"):
        stats = yaml.safe_load((run_dir / "activation_stats" / f"{phase}.yaml").read_text())
        assert stats["phase"] == phase and set(stats["modules"]) == {"relu1", "relu2", "relu3"}
    assert yaml.safe_load((run_dir / "activation_stats" / "test.yaml").read_text())["modules"]["relu1"][
        "samples"] == 100
    with open(run_dir / "activation_stats" / "train_records.csv") as fh:
        assert sum(row["module"] == "conv1" for row in csv.DictReader(fh)) == 72
    with open(run_dir / "param_histograms.csv") as fh:
        assert {row["epoch"] for row in csv.DictReader(fh)} == {"0", "1"}
    assert "Weights sparsity after epoch 1" in (run_dir / f"{run_dir.name.split('___')[0]}.log").read_text()


def test_without_the_flags_a_run_logs_one_best_score_and_writes_no_extra_files(capsys, tmp_path):
    code, err, run_dir = run(["--epochs", "1", "--etrs", "0.02", "--etes", "0.1"], capsys, tmp_path)
    assert code == 0, err
    assert len([line for line in err.splitlines() if line.startswith("==> Best [")]) == 1
    assert "Masks sparsity" not in err and "Weights sparsity after" not in err and "Confusion" not in err
    assert not (run_dir / "activation_stats").exists() and not (run_dir / "param_histograms.csv").exists()
    assert "confusion" not in json.loads((run_dir / "summary.json").read_text())


def test_activation_histograms_run_on_a_portion_of_the_test_split_and_exit(capsys, tmp_path):
    code, err, run_dir = run(["--act-hist", "0.01"], capsys, tmp_path)
    assert code == 0, err
    assert "Collecting activation histograms on 1.0% of the test split (10 images)" in err
    names = {p.name for p in run_dir.iterdir()}
    assert {"activation_histograms.csv", "activation_histograms.png"} <= names
    assert not names & {"checkpoint.pth.tar", "metrics.csv", "summary.json"}
