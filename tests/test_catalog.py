"""docs/classes.md is the generated table of every class a schedule may name: it matches the code, names every
registered class, and shows a class registered later with its arguments."""
import subprocess
import sys
from pathlib import Path

from distill_ee import catalog
from distill_ee.arguments import Fraction, ParamNames, PositiveInt
from distill_ee.components import load_components
from distill_ee.registry import EXTENSIONS, registries

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "classes.md"


def generated():
    """The page as a fresh interpreter prints it (no class a test registered, no test registry)."""
    out = subprocess.run([sys.executable, "-m", "distill_ee.catalog"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_the_committed_page_is_the_generated_one():
    assert PAGE.read_text() == generated(), f"docs/classes.md is out of date: run `{catalog.COMMAND}`"


def test_every_registered_name_of_every_registry_is_in_the_page():
    load_components()
    text = catalog.markdown()
    missing = [f"{r.kind} {n}" for r in registries() for n in r.names() if f"| `{n}` |" not in text]
    assert missing == []
    for registry in registries():
        assert f"## {registry.kind}\n" in text


def test_the_page_is_deterministic_and_holds_no_address_or_path():
    text = catalog.markdown()
    assert text == catalog.markdown()
    assert " at 0x" not in text and str(ROOT) not in text


class TidyUp:
    """Clears the leftovers of a run: every file matching ``pattern``."""

    def __init__(self, name: str, pattern: ParamNames, share: Fraction = 0.5, every: PositiveInt = 2,
                 keep_last: bool = True):
        self.pattern, self.share, self.every, self.keep_last = pattern, share, every, keep_last


def test_a_class_registered_later_appears_with_its_arguments():
    load_components()
    EXTENSIONS.add("TidyUp", TidyUp, aliases=("Tidy",))
    try:
        text = catalog.markdown()
    finally:
        EXTENSIONS.remove("TidyUp")
    (row,) = [line for line in text.splitlines() if line.startswith("| `TidyUp` |")]
    assert "| `Tidy` | `extensions` | Clears the leftovers of a run: every file matching `pattern`. |" in row
    assert ("`pattern`: a list of parameter names, *required*<br>`share`: a number in [0, 1), default `0.5`<br>"
            "`every`: an integer >= 1, default `2`<br>`keep_last`: bool, default `true` |") in row
    assert "`name`" not in row  # supplied by the loader, not written in YAML
    assert "TidyUp" not in catalog.markdown()


def test_write_puts_the_page_in_place(tmp_path):
    target = tmp_path / "docs" / "classes.md"
    assert catalog.main(["--write", "--output", str(target)]) == 0
    assert target.read_text() == catalog.markdown()
    assert [p.name for p in target.parent.iterdir()] == ["classes.md"]
