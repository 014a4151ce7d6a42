"""Dataset sources of the sample application; importing this package registers them in DATASETS."""
from distill_ee.apputils.datasets import cifar10, image_folder, mnist, mnist5k  # noqa: F401  (registration)
