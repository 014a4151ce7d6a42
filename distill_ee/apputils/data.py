"""The dataset API under the name ``data``: the same objects as :mod:`distill_ee.apputils.datasets`."""
from distill_ee.apputils.datasets import (  # noqa: F401  (re-exported)
    DatasetInfo,
    DataSplits,
    InMemoryLoader,
    dataset_info,
    load_dataset,
    make_loaders,
)

__all__ = ["DatasetInfo", "DataSplits", "InMemoryLoader", "dataset_info", "load_dataset", "make_loaders"]
