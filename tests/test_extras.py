"""The library needs torch, pyyaml, numpy and tabulate only. Every other package is an extra of pyproject.toml,
imported where a feature uses it, and a missing one is one line naming the extra that installs it.

The tests run Python with the optional packages made unimportable (as in a fresh environment where
``pip install distill-ee`` installed no extra), then use the library as a user's own loop does."""
import re
import tomllib
from pathlib import Path

import pytest

from distill_ee.errors import MissingExtraError
from distill_ee.extras import EXTRAS, available, extra_modules, install_hint, require, require_installed
from extras_support import OPTIONAL, USER_LOOP, run_python

ROOT = Path(__file__).resolve().parents[1]
CORE = {"torch", "pyyaml", "tabulate", "numpy"}


def test_a_schedule_runs_in_a_user_loop_with_no_optional_package_installed(tmp_path):
    out = run_python(USER_LOOP, OPTIONAL, str(tmp_path / "checkpoint.pth.tar"))
    assert out.returncode == 0, out.stderr
    assert "conv2 filters 8 logits (32, 10)" in out.stdout  # exits attached, AGP to 50%, the filters thinned
    assert "optional packages imported: []" in out.stdout


def test_the_sample_app_without_its_extra_is_one_line_naming_it():
    code = "from distill_ee.apputils.cli import main\nsys.exit(main(['--arch', 'lenet_mnist', '--epochs', '1']))"
    out = run_python(code, "tqdm")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: the sample app (distill-ee, compress_classifier.py) needs tqdm, which is not installed "
        "(pip install distill-ee[app])"]


def test_deployment_without_onnxruntime_is_one_line_naming_its_extra():
    out = run_python("from distill_ee.deploy import MultiExitSession", "onnxruntime")
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1].endswith(
        "distill_ee.deploy (exported models on ONNX Runtime) needs onnxruntime, which is not installed "
        "(pip install distill-ee[deploy])")


def test_onnx_export_without_onnxscript_is_one_line_naming_its_extra():
    code = """
    import torch
    from distill_ee.early_exit.onnx_export import _export
    from distill_ee.errors import MissingExtraError
    try:
        _export(torch.nn.Linear(2, 2), [torch.zeros(1, 2)], __import__('pathlib').Path('x.onnx'), ['x'], ['y'])
    except MissingExtraError as exc:
        print(exc)
    """
    out = run_python(code, "onnxscript")
    assert out.stdout.strip() == "ONNX export needs onnxscript, which is not installed (pip install distill-ee[export])"


def test_require_imports_what_is_installed_and_names_the_extra_of_what_is_not(monkeypatch):
    assert require("tqdm", "progress bars").__name__ == "tqdm"
    monkeypatch.setitem(EXTRAS, "surely_not_installed_pkg", ("surely-not-installed", "sweep"))
    assert not available("surely_not_installed_pkg")
    with pytest.raises(MissingExtraError, match=re.escape(
            "a sweep needs surely-not-installed, which is not installed (pip install distill-ee[sweep])")):
        require("surely_not_installed_pkg.sub", "a sweep")
    with pytest.raises(MissingExtraError):
        require_installed(["numpy", "surely_not_installed_pkg"], "a sweep")
    with pytest.raises(KeyError, match="not an optional package"):
        install_hint("numpy")


def test_a_package_that_is_installed_but_broken_shows_its_own_error(tmp_path, monkeypatch):
    (tmp_path / "broken_pkg").mkdir()
    (tmp_path / "broken_pkg" / "__init__.py").write_text("import a_dependency_it_lacks\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(EXTRAS, "broken_pkg", ("broken-pkg", "app"))
    with pytest.raises(ModuleNotFoundError, match="a_dependency_it_lacks"):
        require("broken_pkg", "something")


def test_pyproject_declares_the_core_and_one_extra_per_optional_package():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = lambda specs: {re.split(r"[<>=\[; ]", s, maxsplit=1)[0].lower() for s in specs}
    assert names(project["dependencies"]) == CORE
    extras = project["optional-dependencies"]
    for module, (distribution, extra) in EXTRAS.items():
        assert distribution in names(extras[extra]), (module, extra)
        assert module in extra_modules(extra)
    assert names(extras["all"]) == {"distill-ee"}


def test_requirements_txt_installs_every_optional_package_so_the_readme_commands_need_no_extra():
    listed = {re.split(r"[<>=\[; ]", line, maxsplit=1)[0].lower()
              for line in (ROOT / "requirements.txt").read_text().splitlines()
              if line.strip() and not line.startswith(("#", "-"))}
    assert CORE <= listed
    assert {distribution for distribution, _ in EXTRAS.values()} <= listed


@pytest.mark.slow
def test_the_sample_app_trains_with_its_own_extra_only(tmp_path):
    others = ",".join(m for m in EXTRAS if m not in extra_modules("app"))
    code = f"""
    from distill_ee.apputils.cli import main
    code = main(['--arch', 'lenet_mnist', '--compress', 'schedules/lenet_mnist.earlyexit.yaml', '--epochs', '1',
                 '--etrs', '0.02', '--evs', '0.1', '--etes', '0.05', '-b', '64', '--no-timing',
                 '-o', {str(tmp_path)!r}, '-n', 'app_only'])
    print("imported:", sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED))
    sys.exit(code)
    """
    out = run_python(code, others)
    assert out.returncode == 0, out.stderr
    assert "imported: []" in out.stdout
    assert list(tmp_path.glob("app_only*/summary.json"))
