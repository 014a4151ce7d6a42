"""Distiller's own example schedules, unchanged, build on their architectures; its absent features say so.

The files are in ``tests/fixtures/distiller_examples`` with their manifest (architecture, and the documented
absence a few of them need); ``benchmarks/distiller_examples.py`` also trains each one an epoch.
"""
from pathlib import Path

import pytest
import yaml

from distill_ee.apputils.check import check
from distill_ee.distiller_absent import ABSENT, PAGE
from distill_ee.errors import DistillEEError

FIXTURES = Path(__file__).parent / "fixtures" / "distiller_examples"
MANIFEST = yaml.safe_load((FIXTURES / "manifest.yaml").read_text())["schedules"]


def dataset_of(arch: str) -> str:
    """Distiller's rule (``classification_dataset_str_from_arch``): the dataset an architecture's name implies."""
    return "cifar10" if "cifar" in arch else "mnist" if "mnist" in arch else "imagenet"


def test_the_manifest_lists_every_example_file_once():
    files = sorted(str(p.relative_to(FIXTURES)) for p in FIXTURES.rglob("*.yaml") if p.name != "manifest.yaml")
    assert sorted(MANIFEST) == files and len(files) == 64


def test_every_absence_the_manifest_names_is_documented():
    for entry in MANIFEST.values():
        if "absent" in entry:
            kind, name = entry["absent"].rsplit(" ", 1)
            assert (kind, name) in ABSENT
    page = (FIXTURES.parents[2] / PAGE).read_text()
    for _, name in ABSENT:
        assert f"`{name}`" in page, f"{name} is not on {PAGE}"


@pytest.mark.parametrize("name", sorted(n for n, e in MANIFEST.items() if "absent" not in e))
def test_a_distiller_example_schedule_builds_unchanged_on_its_architecture(name):
    arch = MANIFEST[name]["arch"]
    plan = check(str(FIXTURES / name), arch, dataset_of(arch))
    assert plan.startswith(f"{FIXTURES / name}: valid for --arch {arch}")


@pytest.mark.parametrize("name", sorted(n for n, e in MANIFEST.items() if "absent" in e))
def test_an_example_needing_an_absent_feature_is_refused_saying_so(name):
    arch = MANIFEST[name]["arch"]
    with pytest.raises(DistillEEError) as err:
        check(str(FIXTURES / name), arch, dataset_of(arch))
    message = str(err.value)
    assert f"not implemented here (see {PAGE})" in message and "\n" not in message
    assert MANIFEST[name]["absent"].rsplit(" ", 1)[1] in message
