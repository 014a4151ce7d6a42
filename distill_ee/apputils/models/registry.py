"""The sample app's architecture registry: name -> factory(num_classes, in_channels, pretrained)."""
from distill_ee.registry import Registry

MODELS = Registry("architecture", named_by_schedules=False)
