"""Fashion-MNIST: idx files in torchvision's layout or where Debian's package puts them, checked like MNIST's,
with its class names in the report. The tests write tiny files of their own; none needs the package."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from distill_ee.apputils.app import main
from distill_ee.apputils.class_report import class_rows, class_table
from distill_ee.apputils.datasets import dataset_info, load_dataset
from distill_ee.apputils.datasets.fashion_mnist import FASHION_MNIST_CLASSES, FashionMnist
from distill_ee.errors import DataError

from .test_data import mnist_arrays, write_idx, write_mnist

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_package(monkeypatch, tmp_path):
    """Debian's location moved to a folder that does not exist."""
    monkeypatch.setattr(FashionMnist, "default_dir", str(tmp_path / "not-installed"))


@pytest.mark.parametrize("layout", [("FashionMNIST", "raw"), ("raw",), ()], ids=["FashionMNIST-raw", "raw", "flat"])
@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_fashion_mnist_reads_idx_files_in_torchvision_layouts(tmp_path, layout, gz):
    write_mnist(tmp_path.joinpath(*layout), n_train=60, n_test=20, gz=gz)
    splits = load_dataset("fashion_mnist", str(tmp_path), valid_size=0.5)
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (30, 30, 20)
    image, label = splits.test[13]
    assert label == 3
    pixels = ((image * 0.3530 + 0.2860) * 255).round()
    assert torch.equal(pixels, torch.full((1, 28, 28), 13.0))


def test_its_classes_are_named_and_its_shape_is_mnists():
    info = dataset_info("fashion_mnist")
    assert (info.num_classes, info.input_shape) == (10, (1, 28, 28))
    assert FASHION_MNIST_CLASSES[0] == "T-shirt/top" and FASHION_MNIST_CLASSES[9] == "Ankle boot"


def test_without_a_directory_it_is_read_from_debians_location(monkeypatch, tmp_path):
    write_mnist(tmp_path / "usr-share", n_train=40, n_test=10, gz=True)
    monkeypatch.setattr(FashionMnist, "default_dir", str(tmp_path / "usr-share"))
    splits = load_dataset("fashion_mnist", valid_size=0.25)
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (30, 10, 10)
    assert splits.test.classes == list(FASHION_MNIST_CLASSES)


def test_a_missing_package_says_how_to_install_it_or_where_to_point(no_package):
    with pytest.raises(DataError) as err:
        load_dataset("fashion_mnist")
    message = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in message and "DATASET_DIR" in message
    assert "train-images-idx3-ubyte" in message and "\n" not in message


def test_a_directory_without_the_files_names_the_expected_layout(tmp_path):
    with pytest.raises(DataError, match=r"idx files not found.*FashionMNIST"):
        load_dataset("fashion_mnist", str(tmp_path))


def test_a_wrong_magic_number_is_one_line_naming_the_file(tmp_path):
    write_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(20) % 10, 2051)
    with pytest.raises(DataError, match="dataset 'fashion_mnist': .*t10k-labels-idx1-ubyte is not an idx file "
                                        "with magic number 2049"):
        load_dataset("fashion_mnist", str(tmp_path))


def test_a_truncated_file_is_one_line(tmp_path):
    write_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DataError, match="declares shape .* but holds"):
        load_dataset("fashion_mnist", str(tmp_path))


def test_a_truncated_gzip_stream_is_one_line(tmp_path):
    write_mnist(tmp_path, gz=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DataError, match="cannot read .*train-images-idx3-ubyte.gz"):
        load_dataset("fashion_mnist", str(tmp_path))


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_a_label_out_of_range_is_one_line(tmp_path, name):
    write_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.full(60, 10), 2049)
    with pytest.raises(DataError, match=f"dataset '{name}': .*holds label 10, expected 0-9"):
        load_dataset(name, str(tmp_path))


def test_images_of_another_size_are_one_line(tmp_path):
    write_mnist(tmp_path)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((20, 32, 32)), 2051)
    with pytest.raises(DataError, match=r"holds \(32, 32\) images, expected 28x28"):
        load_dataset("fashion_mnist", str(tmp_path))


@pytest.mark.slow
def test_the_app_without_the_package_is_one_line_and_exit_status_2_before_any_output(tmp_path):
    env_code = ("import sys; from distill_ee.apputils.datasets.fashion_mnist import FashionMnist; "
                f"FashionMnist.default_dir = {str(tmp_path / 'absent')!r}; "
                "from distill_ee.apputils.app import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", env_code, "--dataset", "fashion_mnist", "--epochs", "1",
                           "-o", str(tmp_path / "runs")], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "apt-get install dataset-fashion-mnist" in lines[0], proc.stderr
    assert not (tmp_path / "runs").exists()


# --- class names in the report ------------------------------------------------------------------------------------


def test_the_class_rows_give_each_class_its_images_and_top1():
    rows = class_rows(["a", "b", "c"], [4, 2, 0], [3, 2, 0])
    assert rows == [{"class": "a", "images": 4, "top1": 75.0}, {"class": "b", "images": 2, "top1": 100.0},
                    {"class": "c", "images": 0, "top1": None}]
    table = class_table(rows).splitlines()
    assert "<- worst" in next(line for line in table if line.startswith("| a "))
    assert "<- worst" not in next(line for line in table if line.startswith("| b "))


@pytest.mark.slow
def test_the_apps_report_names_fashion_mnists_classes_with_their_test_top1(tmp_path, caplog):
    images, labels = mnist_arrays(100)
    data = tmp_path / "data" / "FashionMNIST" / "raw"
    data.mkdir(parents=True)
    for prefix in ("train", "t10k"):
        write_idx(data / f"{prefix}-images-idx3-ubyte", images, 2051)
        write_idx(data / f"{prefix}-labels-idx1-ubyte", labels, 2049)
    assert main([str(tmp_path / "data"), "--dataset", "fashion_mnist", "--arch", "lenet_mnist", "--epochs", "1",
                 "-b", "50", "--seed", "1", "--deterministic", "--no-timing", "-o", str(tmp_path / "runs"),
                 "-n", "fm"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["dataset"] == "fashion_mnist"
    assert [r["class"] for r in summary["classes"]] == list(FASHION_MNIST_CLASSES)
    assert [r["images"] for r in summary["classes"]] == [10] * 10
    right = sum(r["top1"] * r["images"] / 100 for r in summary["classes"])
    assert right == pytest.approx(summary["top1"])  # the same rule for top-1, per class and overall
    log = (run / "fm.log").read_text()
    assert "Test top-1 per class" in log and "Ankle boot" in log

