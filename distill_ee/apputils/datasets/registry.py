"""The sample app's dataset registry: name -> DatasetSource."""
from distill_ee.registry import Registry

DATASETS = Registry("dataset", named_by_schedules=False)
