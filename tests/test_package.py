"""distill_ee is an installable package: a wheel builds, installs, imports from any folder and brings the
``distill-ee`` command."""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from extras_support import OPTIONAL, USER_LOOP, run_python

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The project built as a wheel and installed (without dependencies) into a folder of its own."""
    pytest.importorskip("setuptools")
    base = tmp_path_factory.mktemp("pkg")
    source = base / "source"  # a copy: building writes build/ and egg-info folders next to the sources
    shutil.copytree(ROOT / "distill_ee", source / "distill_ee", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    run = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(run + ["wheel", str(source), "--no-deps", "--no-build-isolation", "-w", str(base / "dist")],
                   check=True, capture_output=True, timeout=300, cwd=base)
    (wheel,) = (base / "dist").glob("*.whl")
    subprocess.run(run + ["install", "--no-deps", "--target", str(base / "site"), str(wheel)], check=True,
                   capture_output=True, timeout=300, cwd=base)
    return wheel, base / "site"


def test_the_wheel_holds_every_package_and_declares_the_command(installed):
    wheel, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    for package in ("distill_ee", "distill_ee/schedule", "distill_ee/early_exit", "distill_ee/thinning",
                    "distill_ee/apputils/datasets", "distill_ee/apputils/models"):
        assert f"{package}/__init__.py" in names, package
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "distill-ee = distill_ee.apputils.cli:main" in entry_points


def test_the_installed_package_imports_from_any_folder_and_its_command_runs(installed, tmp_path):
    _, site = installed
    env = dict(os.environ, PYTHONPATH=str(site))
    out = subprocess.run([sys.executable, "-c", "import distill_ee; print(distill_ee.__file__)"], env=env,
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().startswith(str(site)), out.stderr
    command = site / "bin" / "distill-ee"
    out = subprocess.run([str(command), "check", str(ROOT / "schedules/lenet_mnist.agp.yaml"), "--arch",
                          "lenet_mnist"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "valid for --arch lenet_mnist" in out.stdout


def test_the_installed_package_needs_no_extra_to_run_a_schedule_in_a_user_loop(installed, tmp_path):
    wheel, site = installed
    metadata = zipfile.ZipFile(wheel).read(next(n for n in zipfile.ZipFile(wheel).namelist()
                                                if n.endswith("METADATA"))).decode()
    required = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert sorted(r.split(">")[0] for r in required if "extra ==" not in r) == ["numpy", "pyyaml", "tabulate", "torch"]
    env = dict(os.environ, PYTHONPATH=str(site))  # the wheel's copy, not the checkout's, with no extra importable
    out = run_python(USER_LOOP, OPTIONAL, str(tmp_path / "checkpoint.pth.tar"), cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    assert "conv2 filters 8 logits (32, 10)" in out.stdout and "optional packages imported: []" in out.stdout
    assert f"distill_ee from {site}" in out.stdout
