"""Fuzzing an export's manifest: every mutant is accepted and runs as the intact export does, or is refused with
one ManifestError line; never another exception, never a hang.

The mutants change the manifest field by field (types, values, list lengths, slots, file names, hashes, the
files' records) or its text. Run it offline with another seed and count; it prints how many mutants were
accepted and refused, the other exceptions, wrong answers and hangs (all three must be 0) and the slowest::

    python -m tests.deploy.test_manifest_fuzz --seed 1 --count 5000
"""
import argparse
import copy
import json
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a module: support lies in tests/

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from distill_ee.deploy import ManifestError, MultiExitSession  # noqa: E402
from distill_ee.early_exit import EarlyExits  # noqa: E402
from distill_ee.early_exit.onnx_export import export_onnx  # noqa: E402
from deploy_support import HEAD, Skip  # noqa: E402
from support import Hung, no_hang  # noqa: E402

EXITS = {"exits": {"e1": {"attach": "r1", "branch": HEAD}, "e2": {"attach": "r2", "branch": HEAD}}}
#: seconds one mutant may take before it counts as a hang
HANG = 10.0


def export_sample(directory: Path) -> np.ndarray:
    """Export the sample model into ``directory`` with thresholds that let about half of the samples leave at
    each exit; the batch the mutants run on."""
    torch.manual_seed(0)
    model = Skip().eval()
    exits = EarlyExits.from_config(EXITS, model, num_classes=10, input_shape=(1, 12, 12))
    export_onnx(exits.multi_exit_model().eval(), model, directory)
    x = np.random.RandomState(0).randn(6, 1, 12, 12).astype(np.float32)
    session = MultiExitSession(directory, threads=1)
    session.set_thresholds([float(np.median(s)) for s in session.simulate_scores(x)[1]])
    session.manifest.write()
    return x


# --------------------------------------------------------------------------- mutants
GARBAGE: List[Any] = [None, True, False, 0, 1, 2, 3, 4, 5, -1, 4096, 4097, 10 ** 12, 2 ** 63, 10 ** 30, 0.5, -0.0,
                      1e308, float("nan"), float("inf"), "", "x", "slot1", "features", "logits", "stage0.onnx",
                      "exit1.onnx", "manifest.json", "../stage0.onnx", "a\nb", "\u00e9", [], [0], [None], [[]], {},
                      {"a": 1}, list(range(300)), "0" * 64, "float", "double"]


def nodes(value: Any, path: Tuple[Any, ...] = ()) -> Iterator[Tuple[Tuple[Any, ...], Any]]:
    """Every (path, value) of a JSON document, the root first."""
    yield path, value
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        yield from nodes(child, path + (key,))


def _set(doc: Any, path: Tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return doc


def _changed(value: Any, rng: random.Random, siblings: List[Any]) -> Tuple[str, Any]:
    """A mutation of one value: (what was done, the new value)."""
    choices: List[Callable[[], Tuple[str, Any]]] = [
        lambda: ("replaced by garbage", copy.deepcopy(rng.choice(GARBAGE))),
        lambda: ("replaced by another value of the manifest", copy.deepcopy(rng.choice(siblings)))]
    if isinstance(value, bool) or value is None:
        pass
    elif isinstance(value, int):
        choices += [lambda: ("nudged", value + rng.choice([-2, -1, 1, 2])), lambda: ("negated", -value - 1),
                    lambda: ("scaled", value * rng.choice([2, 1000, 10 ** 9]))]
    elif isinstance(value, float):
        choices += [lambda: ("nudged", value + rng.uniform(-1, 1)), lambda: ("negated", -value)]
    elif isinstance(value, str):
        choices += [lambda: ("one character changed", _one_char(value, rng)), lambda: ("doubled", value + value),
                    lambda: ("upper-cased", value.upper())]
    elif isinstance(value, list):
        choices += [lambda: ("emptied", []), lambda: ("shuffled", rng.sample(value, len(value))),
                    lambda: ("shortened", value[:-1]), lambda: ("lengthened", value + value[-1:]),
                    lambda: ("repeated", value * rng.choice([2, 300])),
                    lambda: ("two entries swapped", _swapped(value, rng))]
    elif isinstance(value, dict):
        choices += [lambda: ("a key removed", _without(value, rng)),
                    lambda: ("a key added", {**value, rng.choice(["x", "slot9", "stage9.onnx"]): rng.choice(GARBAGE)}),
                    lambda: ("two values swapped", _swapped_values(value, rng))]
    return rng.choice(choices)()


def _one_char(text: str, rng: random.Random) -> str:
    if not text:
        return "0"
    i = rng.randrange(len(text))
    return text[:i] + rng.choice("0af9x/.\n") + text[i + 1:]


def _swapped(items: List[Any], rng: random.Random) -> List[Any]:
    items = list(items)
    if len(items) > 1:
        i, j = rng.sample(range(len(items)), 2)
        items[i], items[j] = items[j], items[i]
    return items


def _without(mapping: dict, rng: random.Random) -> dict:
    if not mapping:
        return mapping
    key = rng.choice(sorted(mapping, key=str))
    return {k: v for k, v in mapping.items() if k != key}


def _swapped_values(mapping: dict, rng: random.Random) -> dict:
    keys = sorted(mapping, key=str)
    if len(keys) < 2:
        return dict(mapping)
    a, b = rng.sample(keys, 2)
    return {**mapping, a: mapping[b], b: mapping[a]}


def mutant(base: dict, rng: random.Random) -> Tuple[str, bytes]:
    """One mutant of the manifest ``base``: (what was changed, the bytes written as manifest.json)."""
    text = json.dumps(base, indent=2).encode()
    if rng.random() < 0.05:
        return _text_mutant(text, rng)
    doc, done = copy.deepcopy(base), []
    for _ in range(1 if rng.random() < 0.7 else rng.randint(2, 3)):
        found = list(nodes(doc))
        path, value = rng.choice(found[1:])
        what, new = _changed(value, rng, [v for _, v in found[1:]])
        doc = _set(doc, path, new)
        done.append(f"{_where(path)}: {what}")
    return "; ".join(done), json.dumps(doc).encode()


def _text_mutant(text: bytes, rng: random.Random) -> Tuple[str, bytes]:
    i = rng.randrange(len(text))
    return rng.choice([
        (f"text cut at byte {i}", text[:i]),
        (f"byte {i} replaced by 0xff", text[:i] + b"\xff" + text[i + 1:]),
        ("text emptied", b""),
        ("arrays nested 100000 deep", b"[" * 100000 + b"]" * 100000),
    ])


def _where(path: Tuple[Any, ...]) -> str:
    return "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in path).lstrip(".") or "the root"


# --------------------------------------------------------------------------- running them
class WrongAnswer(Exception):
    """An accepted mutant whose answers differ from the intact export's."""


@dataclass
class Counts:
    """What became of the mutants."""

    accepted: int = 0
    refused: int = 0
    other: List[str] = field(default_factory=list)
    wrong: List[str] = field(default_factory=list)
    hangs: List[str] = field(default_factory=list)
    slowest: Tuple[float, str] = (0.0, "")

    def report(self) -> str:
        """The counts in one paragraph."""
        lines = [f"accepted {self.accepted}, refused {self.refused}, other exceptions {len(self.other)}, "
                 f"wrong answers {len(self.wrong)}, hangs {len(self.hangs)}; slowest mutant "
                 f"{self.slowest[0] * 1000:.1f} ms ({self.slowest[1]})"]
        return "\n".join(lines + [f"  {line}" for line in self.other + self.wrong + self.hangs][:20])


def reference(directory: Path, x: np.ndarray) -> List[np.ndarray]:
    """The intact export's answers on ``x``: every exit's logits, the final's, and the backbone's."""
    session = MultiExitSession(directory, threads=1)
    return [*session.simulate(x), session.backbone(x)]


def check_runs(session: MultiExitSession, x: np.ndarray, want: List[np.ndarray]) -> None:
    """WrongAnswer unless ``session`` computes the intact export's logits and takes the exits it decides."""
    logits, scores = session.simulate_scores(x)
    if not all(np.array_equal(a, b) for a, b in zip([*logits, session.backbone(x)], want)):
        raise WrongAnswer("the logits differ from the intact export's")
    index = session.decide(scores)
    got, taken = session(x)
    chosen = np.stack(logits)[index, np.arange(len(x))]
    if not (taken == index).all() or np.abs(got - chosen).max() > 1e-5:
        raise WrongAnswer(f"exits {taken.tolist()} taken, {index.tolist()} decided, logits off by "
                          f"{np.abs(got - chosen).max():.3g}")
    one, first = session(x[:1])
    if first[0] != index[0] or np.abs(one[0] - chosen[0]).max() > 1e-5:
        raise WrongAnswer("a batch of one takes another exit")


def run_mutant(directory: Path, data: bytes, x: np.ndarray, want: List[np.ndarray]) -> str:
    """``accepted`` or ``refused``; anything else describes the failure."""
    (directory / "manifest.json").write_bytes(data)
    try:
        with no_hang(HANG):
            check_runs(MultiExitSession(directory, threads=1), x, want)
        return "accepted"
    except ManifestError as err:
        text = str(err)
        if "\n" in text or not text.startswith(str(directory / "manifest.json")):
            return f"other: ManifestError not one located line: {text!r}"
        return "refused"
    except WrongAnswer as err:
        return f"wrong: {err}"
    except Hung:
        return "hang"
    except Exception as err:  # the fuzz counts every other exception type as a failure
        return f"other: {type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"


def fuzz(source: Path, x: np.ndarray, seed: int, count: int, work: Path) -> Counts:
    """``count`` mutants (seeded by ``seed``) of the manifest of the export in ``source``, run in a copy in
    ``work``."""
    directory = work / f"fuzz{seed}"
    shutil.copytree(source, directory)
    base = json.loads((source / "manifest.json").read_text())
    want = reference(source, x)
    rng, counts = random.Random(seed), Counts()
    for _ in range(count):
        what, data = mutant(base, rng)
        start = time.perf_counter()
        result = run_mutant(directory, data, x, want)
        seconds = time.perf_counter() - start
        counts.slowest = max(counts.slowest, (seconds, what))
        if result in ("accepted", "refused"):
            setattr(counts, result, getattr(counts, result) + 1)
        else:
            kind, _, detail = result.partition(": ")
            {"other": counts.other, "wrong": counts.wrong, "hang": counts.hangs}[kind].append(f"{what} -> {detail}")
    return counts


# --------------------------------------------------------------------------- the test, and the offline run
@pytest.fixture(scope="module")
def export(tmp_path_factory):
    directory = tmp_path_factory.mktemp("fuzz") / "onnx"
    return directory, export_sample(directory)


@pytest.mark.slow
def test_every_mutant_of_a_manifest_is_accepted_and_runs_or_is_one_manifest_error(export, tmp_path):
    counts = fuzz(*export, seed=0, count=200, work=tmp_path)
    assert not counts.other and not counts.wrong and not counts.hangs, counts.report()
    assert counts.accepted > 10 and counts.refused > 100, counts.report()
    assert counts.slowest[0] < 2, counts.report()


def main(argv: List[str]) -> int:
    """Export the sample model, fuzz its manifest, print the counts; 1 when any mutant failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--count", type=int, default=5000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        x = export_sample(Path(work) / "onnx")
        start = time.perf_counter()
        counts = fuzz(Path(work) / "onnx", x, args.seed, args.count, Path(work))
        print(f"seed {args.seed}, {args.count} mutants in {time.perf_counter() - start:.0f} s: {counts.report()}")
    return 1 if counts.other or counts.wrong or counts.hangs else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
