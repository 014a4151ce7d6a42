"""What a schedule may name comes from an explicit list of built-in modules and from installed plugins (the
``distill_ee.plugins`` entry-point group), never from a package walk."""
import importlib
import re
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from distill_ee import components
from distill_ee.early_exit.exits import EarlyExits
from distill_ee.errors import DistillEEError
from distill_ee.registry import EXIT_CRITERIA
from distill_ee.schedule import schedule_from_text

PACKAGE = Path(components.__file__).parent

PLUGIN = '''
from distill_ee.early_exit.criteria import ExitCriterion
from distill_ee.registry import EXIT_CRITERIA


@EXIT_CRITERIA.register("top_logit")
class TopLogit(ExitCriterion):
    """Leave when the largest logit is above the threshold."""

    name = "top_logit"

    def confidence(self, logits):
        return logits.max(dim=1).values

    def exit_mask(self, logits, threshold, state=None):
        return self.confidence(logits) > threshold
'''


def install_distribution(root: Path, module: str, source: str, entry: str) -> None:
    """A distribution on ``root`` (as pip leaves it) whose entry point of the plugin group names ``entry``."""
    (root / f"{module}.py").write_text(source)
    info = root / f"{module}_dist-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}-dist\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{components.PLUGIN_GROUP}]\n{module} = {entry}\n")


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A fresh site folder on sys.path; plugins loaded from it are forgotten afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(components, "_plugins_loaded", set())
    importlib.invalidate_caches()
    yield tmp_path
    for name in ("top_logit",):
        if name in EXIT_CRITERIA:
            EXIT_CRITERIA.remove(name)
    for name in ("my_exit_rules", "broken_plugin"):
        sys.modules.pop(name, None)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(torch.relu(self.conv1(x))), 1))


SCHEDULE = """version: 1
early_exits:
  branchy:
    class: EarlyExit
    criterion: top_logit
    exits:
      exit1: {attach: conv1, branch: [adaptive_avgpool, flatten, linear], threshold: 0.1}
policies:
  - early_exit: {instance_name: branchy}
    epochs: [0]
"""


def test_a_criterion_from_an_installed_plugin_is_usable_from_yaml(site):
    install_distribution(site, "my_exit_rules", PLUGIN, "my_exit_rules")
    assert "top_logit" not in EXIT_CRITERIA
    model = Net()
    schedule_from_text(model, torch.optim.SGD(model.parameters(), lr=0.1), SCHEDULE,
                       example_input=torch.zeros(1, 1, 8, 8))
    exits = EarlyExits.of(model)
    assert exits.criteria == ["top_logit"]
    multi = exits.multi_exit_model().eval()
    x = torch.randn(32, 1, 8, 8)
    logits, index = multi(x)
    simulated = multi.simulate(x)
    leaves = simulated[0].max(dim=1).values > 0.1
    assert torch.equal(index, torch.where(leaves, 0, 1))
    assert torch.equal(logits, torch.where(leaves[:, None], simulated[0], simulated[1]))


def test_an_unknown_criterion_without_the_plugin_is_a_located_error(site):
    model = Net()
    with pytest.raises(DistillEEError, match=r"s.yaml:5: early_exits.branchy.criterion: unknown exit criterion "
                                             r"'top_logit'"):
        schedule_from_text(model, torch.optim.SGD(model.parameters(), lr=0.1), SCHEDULE, file="s.yaml",
                           example_input=torch.zeros(1, 1, 8, 8))


def test_a_plugin_that_fails_to_import_is_one_clear_error(site):
    install_distribution(site, "broken_plugin", "raise ImportError('needs a package that is missing')",
                         "broken_plugin")
    with pytest.raises(DistillEEError, match="plugin 'broken_plugin' .* failed to load: ImportError: needs a package"):
        components.load_components()


def test_every_module_that_registers_something_is_in_the_built_in_list():
    registering = set()
    for path in PACKAGE.rglob("*.py"):
        if "apputils" in path.parts:
            continue
        text = path.read_text()
        registers = r"^(@\w+\.register\(|@register_attachment|add_section\(|STEP_KINDS\.add\(|LR_SCHEDULERS\.add\()"
        if re.search(registers, text, re.M):
            module = ".".join(("distill_ee",) + path.relative_to(PACKAGE).with_suffix("").parts)
            registering.add(module)
    registering.discard("distill_ee.registry")
    assert registering == set(components.BUILTIN_MODULES)


def test_no_module_is_found_by_walking_packages():
    assert "pkgutil" not in Path(components.__file__).read_text()
    assert "get_referrers" not in "".join(p.read_text() for p in PACKAGE.rglob("*.py"))
