"""The dataset of a run given a DATASET_DIR but no ``--dataset``: inferred from the architecture, as Distiller's
``classification_dataset_str_from_arch`` does ('cifar' in the name: cifar10, 'mnist': mnist, else imagenet)."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional, Tuple

from distill_ee.apputils.datasets.mnist5k import FILE_NAME as MNIST5K_FILE
from distill_ee.errors import DataError

#: the dataset of a run with neither DATASET_DIR nor --dataset
DEFAULT_DATASET = "mnist5k"


def dataset_from_arch(arch: str) -> str:
    """Distiller's rule: cifar10 for an architecture named ``*cifar*``, mnist for ``*mnist*``, else imagenet."""
    if "cifar" in arch:
        return "cifar10"
    if "mnist" in arch:
        return "mnist"
    return "imagenet"


def resolve_dataset(dataset: Optional[str], data_dir: Optional[str], arch: str) -> Tuple[str, Optional[str]]:
    """The dataset to read and, when it was not named, why it was chosen (a sentence for the log, else None).

    A ``--dataset`` is used as given; without one, no DATASET_DIR means the embedded mnist5k, a directory that is
    or holds ``mnist_5k.csv.gz`` means mnist5k read from there, and any other directory the dataset Distiller
    infers from the architecture."""
    if dataset is not None:
        return dataset, None
    if data_dir is None:
        return DEFAULT_DATASET, None
    if os.path.isfile(data_dir) or os.path.isfile(os.path.join(data_dir, MNIST5K_FILE)):
        return DEFAULT_DATASET, f"No --dataset given: {data_dir} holds {MNIST5K_FILE}, read as dataset 'mnist5k'"
    inferred = dataset_from_arch(arch)
    return inferred, (f"No --dataset given: dataset {inferred!r} inferred from --arch {arch} (Distiller's rule: "
                      f"'cifar' in the name -> cifar10, 'mnist' -> mnist, otherwise imagenet); give --dataset to "
                      f"choose another")


@contextlib.contextmanager
def saying_inferred(why: Optional[str], dataset: str, arch: str) -> Iterator[None]:
    """A DataError about a dataset that was inferred (``why`` is not None) ends by saying so, in one line."""
    try:
        yield
    except DataError as exc:
        if why is None or dataset == DEFAULT_DATASET:
            raise
        raise DataError(f"{exc} (no --dataset given: {dataset!r} was inferred from --arch {arch}; give --dataset "
                        f"to choose another)") from None
