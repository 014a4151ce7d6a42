"""The import graph: the core never imports the sample app, and the packages import each other without cycles.

``import_graph()`` reads every module's imports (module level and inside functions) with ``ast``; run this
file directly to print the package-level graph in words.
"""
import ast
from collections import defaultdict
from pathlib import Path
from typing import Dict, Set

PACKAGE = Path(__file__).resolve().parents[1] / "distill_ee"
#: the sample application and the entry points that start it: the only places allowed to import it
APP = ("distill_ee.apputils", "distill_ee.__main__")


def module_name(path: Path) -> str:
    parts = ("distill_ee",) + path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> Set[str]:
    """The distill_ee modules ``path`` imports, relative imports resolved."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("distill_ee"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            if base.startswith("distill_ee"):
                found.add(base)
    return found


def import_graph() -> Dict[str, Set[str]]:
    """Module -> the distill_ee modules it imports."""
    return {module_name(p): imported(p) for p in PACKAGE.rglob("*.py")}


def package_of(module: str) -> str:
    """``distill_ee.early_exit.exits`` -> ``early_exit``; top-level modules stand for themselves."""
    parts = module.split(".")
    if len(parts) == 1:
        return "distill_ee"
    return parts[1]


def package_graph() -> Dict[str, Set[str]]:
    """Package (or top-level module) -> the packages it imports, itself excluded."""
    graph: Dict[str, Set[str]] = defaultdict(set)
    for module, targets in import_graph().items():
        source = package_of(module)
        graph[source].update(package_of(t) for t in targets if package_of(t) != source)
    return graph


def test_nothing_outside_the_app_imports_the_app():
    offenders = {m: sorted(t for t in targets if t.startswith(APP[0]))
                 for m, targets in import_graph().items() if not m.startswith(APP)}
    assert {m: t for m, t in offenders.items() if t} == {}


def test_the_core_packages_import_each_other_without_cycles():
    graph = {p: t for p, t in package_graph().items() if p not in ("apputils", "__main__", "distill_ee")}
    graph = {p: {t for t in targets if t in graph} for p, targets in graph.items()}
    visiting, done = set(), set()

    def visit(node, path):
        assert node not in visiting, "import cycle: " + " -> ".join(path + [node])
        if node in done:
            return
        visiting.add(node)
        for target in sorted(graph[node]):
            visit(target, path + [node])
        visiting.discard(node)
        done.add(node)

    for node in sorted(graph):
        visit(node, [])


if __name__ == "__main__":
    for source, targets in sorted(package_graph().items()):
        print(f"{source} imports {', '.join(sorted(targets)) or 'nothing of distill_ee'}")
