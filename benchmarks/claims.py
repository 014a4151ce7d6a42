"""The ready schedules' results, and the docs' figures of them, generated from the runs that produce them.

Every ready schedule whose header command runs on the embedded data is a claim: its command(s), as the header
writes them, and the result they give. So is each figure the docs quote from a command (``DOC_CLAIMS``). A
claim's commands run in a scratch directory; the ``summary.json`` each writes is the claim's results file
(``benchmarks/results/claims/<claim>.json``, with the machine that ran it), and its text is rendered from that
file into the header (between ``# RESULT-BEGIN`` and ``# RESULT-END``) or the document (between
``<!-- RESULT-BEGIN <claim> -->`` and ``<!-- RESULT-END -->``). Only what ``--deterministic`` keeps identical
from run to run is rendered (no wall-clock figure: the benchmarks measure speed side by side).

    python benchmarks/claims.py                 # re-run every claim; fail on any difference from its text
    python benchmarks/claims.py --write         # re-run, write the results files and the texts
    python benchmarks/claims.py --render        # write the texts from the committed results files, run nothing
    python benchmarks/claims.py --list          # the claims and where their texts are
        [--only NAME[,NAME]]

The figures reproduce to the image at a fixed thread count on the same kind of CPU (``--deterministic``); on
another CPU or thread count the kernels' rounding differs and so can a few test images. A difference is
reported figure by figure, with the machine each side ran on.
"""
from __future__ import annotations

import argparse
import difflib
import glob
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.claim_text import render  # noqa: E402
from distill_ee.atomic import atomic_write_json, atomic_write_text  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "claims"
#: what a command's scratch directory links to, so that the header's relative paths resolve
LINKED = ("compress_classifier.py", "schedules", "distill_ee")
#: a header command runs on the embedded data unless it names a dataset directory or another dataset
EMBEDDED = re.compile(r"--dataset\s+(?!mnist5k\b)|\bDATA/")
HEADER_BEGIN, HEADER_END = "# RESULT-BEGIN", "# RESULT-END"


@dataclass
class Claim:
    """Commands, as a user types them in the repository's root, and the files their result is written into."""

    name: str
    commands: List[str]
    targets: List[Path]
    note: str = ""  # what the text says before the figures (doc claims)
    summaries: List[Dict[str, Any]] = field(default_factory=list)

    def results_file(self) -> Path:
        """Where this claim's results are kept."""
        return RESULTS / f"{self.name}.json"


#: figures the docs quote from commands that are not a ready schedule's header
DOC_CLAIMS: Tuple[Tuple[str, Tuple[str, ...], str, str], ...] = (
    ("ptq_quick_start",
     ("python compress_classifier.py --arch lenet_mnist --compress schedules/lenet_mnist.earlyexit_agp.yaml "
      "--epochs 12 --lr 0.02 --seed 0 --deterministic -o runs -n quick_start",
      "python compress_classifier.py --arch lenet_mnist --resume-from runs/quick_start___*/checkpoint.pth.tar "
      "--evaluate --qe --qe-mode asym_u --qe-per-channel --seed 0 --deterministic -o runs -n ptq"),
     "docs/quantization.md", "The quick start's model, then the same checkpoint quantized after training"),
)


def header_commands(text: str) -> List[str]:
    """The ``python compress_classifier.py`` commands of a schedule's header, continuation lines joined."""
    commands, current = [], None
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        body = line[1:].strip()
        if current is None and body.startswith("python compress_classifier.py"):
            current = body
        elif current is not None:
            current += " " + body
        if current is not None:
            if current.endswith("\\"):
                current = current[:-1].rstrip()
            else:
                commands.append(re.sub(r"\s+", " ", current))
                current = None
    return commands


def schedule_claims() -> List[Claim]:
    """Every ready schedule whose header commands run on the embedded data."""
    found = []
    for path in sorted(ROOT.glob("schedules/**/*.yaml")):
        commands = header_commands(path.read_text())
        if commands and not any(EMBEDDED.search(c) for c in commands):
            name = str(path.relative_to(ROOT / "schedules")).replace("/", "_").removesuffix(".yaml")
            found.append(Claim(name, commands, [path]))
    return found


def all_claims() -> List[Claim]:
    """The schedules' claims and the docs'."""
    docs = [Claim(name, list(commands), [ROOT / target], note) for name, commands, target, note in DOC_CLAIMS]
    return schedule_claims() + docs


def machine() -> Dict[str, Any]:
    """What the figures depend on: the CPU, the threads, torch."""
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__}


def run_claim(claim: Claim, log: Callable[[str], None] = print) -> List[Dict[str, Any]]:
    """Run the claim's commands in a scratch directory; the summary.json each wrote, in order."""
    with tempfile.TemporaryDirectory(prefix="claim_") as scratch:
        for name in LINKED:
            os.symlink(ROOT / name, Path(scratch) / name)
        summaries = []
        for command in claim.commands:
            before = written(scratch)
            started = time.perf_counter()
            argv = shlex.split(command)
            argv = [sys.executable if i == 0 else _expand(a, scratch) for i, a in enumerate(argv)]
            done = subprocess.run(argv, cwd=scratch, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"{claim.name}: `{command}` failed (exit status {done.returncode}):\n"
                                 f"{done.stderr[-2000:]}")
            new = sorted(written(scratch) - before)
            if len(new) != 1:
                raise SystemExit(f"{claim.name}: `{command}` wrote {len(new)} summary.json files, not one")
            summaries.append(normalized(json.loads(Path(new[0]).read_text())))
            log(f"    {time.perf_counter() - started:.0f} s: {command}")
        return summaries


#: a run directory's time stamp (``NAME___2026.12.04-132525``), different in every run
STAMP = re.compile(r"___\d{4}\.\d\d\.\d\d-\d{6}")


def normalized(value: Any) -> Any:
    """A summary with its run directories' time stamps replaced by ``___*``, as the header commands write them."""
    if isinstance(value, dict):
        return {k: normalized(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normalized(v) for v in value]
    return STAMP.sub("___*", value) if isinstance(value, str) else value


def written(scratch: str) -> set:
    """The summary.json files under ``scratch``, not looking into the repository's linked folders."""
    return {str(p) for top in Path(scratch).iterdir() if top.name not in LINKED
            for p in ([top] if top.name == "summary.json" else top.rglob("summary.json"))}


def _expand(arg: str, cwd: str) -> str:
    """A shell glob in an argument (``runs/x___*/checkpoint.pth.tar``): its newest match, as the shell's last."""
    if "*" not in arg:
        return arg
    found = sorted(glob.glob(arg, root_dir=cwd))
    return found[-1] if found else arg


def claim_text(claim: Claim, summaries: Sequence[Dict[str, Any]], ran_on: Dict[str, Any]) -> str:
    """The rendered result of a claim: one paragraph, the machine it ran on last."""
    where = (f"{ran_on['cpu']}, {ran_on['cores']} cores, {ran_on['threads']} threads, PyTorch {ran_on['torch']}")
    return render(claim.commands, summaries, claim.note) + f" (Run on {where}; written by benchmarks/claims.py.)"


def write_text(path: Path, claim: Claim, text: str) -> bool:
    """Put ``text`` between ``path``'s markers for ``claim``; True when the file changed."""
    old = path.read_text()
    if path.suffix == ".yaml":
        begin, end = f"{HEADER_BEGIN} (written by benchmarks/claims.py --write from its run of this command)", \
            HEADER_END
        block = "\n".join(wrap_comment(text))
    else:
        begin, end = f"<!-- RESULT-BEGIN {claim.name} (generated by benchmarks/claims.py) -->", "<!-- RESULT-END -->"
        block = text
    new = replace_block(old, begin, end, block, path)
    if new != old:
        atomic_write_text(path, new)
    return new != old


def replace_block(text: str, begin: str, end: str, block: str, path: Path) -> str:
    """``text`` with what lies between the line starting ``begin`` and the next ``end`` replaced by ``block``."""
    lines = text.split("\n")
    key = begin.split(" (")[0]
    starts = [i for i, line in enumerate(lines) if line.startswith(key)]
    if len(starts) != 1:
        raise SystemExit(f"{shown(path)}: expected one `{key}` marker, found {len(starts)}")
    start = starts[0]
    stop = next((i for i in range(start + 1, len(lines)) if lines[i].startswith(end)), None)
    if stop is None:
        raise SystemExit(f"{shown(path)}:{start + 1}: `{key}` has no `{end}` after it")
    return "\n".join(lines[:start] + [begin, block] + lines[stop:])


def shown(path: Path) -> str:
    """A path as messages show it: relative to the repository when inside it."""
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def current_text(path: Path, claim: Claim) -> str:
    """What ``path`` says now between its markers for ``claim``."""
    key = HEADER_BEGIN if path.suffix == ".yaml" else f"<!-- RESULT-BEGIN {claim.name} "
    end = HEADER_END if path.suffix == ".yaml" else "<!-- RESULT-END -->"
    lines = path.read_text().split("\n")
    starts = [i for i, line in enumerate(lines) if line.startswith(key)]
    if len(starts) != 1:
        return ""
    body = []
    for line in lines[starts[0] + 1:]:
        if line.startswith(end):
            break
        body.append(line[2:] if path.suffix == ".yaml" else line)
    return " ".join(body) if path.suffix == ".yaml" else "\n".join(body)


def wrap_comment(text: str, width: int = 116) -> List[str]:
    """``text`` as comment lines of at most ``width`` characters."""
    import textwrap

    return ["# " + line for line in textwrap.wrap(text, width - 2, break_on_hyphens=False)]


def figure_differences(old: Any, new: Any, where: str = "") -> List[str]:
    """Every leaf value that differs between two summaries, as ``path: old -> new``."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            out += figure_differences(old.get(key), new.get(key), f"{where}.{key}" if where else str(key))
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in figure_differences(a, b, f"{where}[{i}]")]
    return [] if old == new else [f"{where}: {old!r} -> {new!r}"]


def stored(claim: Claim) -> Optional[Dict[str, Any]]:
    """The claim's committed results file, or None."""
    path = claim.results_file()
    return json.loads(path.read_text()) if path.is_file() else None


def check(claim: Claim, summaries: List[Dict[str, Any]], ran_on: Dict[str, Any]) -> List[str]:
    """What differs between a fresh run and the claim's results file and texts."""
    record = stored(claim)
    if record is None:
        return [f"no results file ({shown(claim.results_file())}): run --write"]
    problems = []
    if record["commands"] != claim.commands:
        problems.append("the commands changed since the results file was written")
    problems += figure_differences(record["summaries"], summaries)
    if problems and record["machine"] != ran_on:
        problems.append(f"written on {record['machine']}, run now on {ran_on}")
    problems += stale_texts(claim, record)
    return problems


def stale_texts(claim: Claim, record: Dict[str, Any]) -> List[str]:
    """The claim's texts that do not read as its results file renders."""
    want = claim_text(claim, record["summaries"], record["machine"])
    out = []
    for path in claim.targets:
        have = current_text(path, claim)
        if re.sub(r"\s+", " ", have).strip() != re.sub(r"\s+", " ", want).strip():
            diff = difflib.unified_diff(have.split(". "), want.split(". "), "text", "results file", lineterm="", n=0)
            out.append(f"{shown(path)}: its text is not its results file's:\n    " + "\n    ".join(diff))
    return out


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="re-run and write the results files and the texts")
    mode.add_argument("--render", action="store_true", help="write the texts from the results files, run nothing")
    mode.add_argument("--list", action="store_true", help="list the claims")
    parser.add_argument("--only", default=None, metavar="NAME[,NAME]", help="these claims only")
    args = parser.parse_args(argv)
    claims = all_claims()
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {c.name for c in claims}
        if unknown:
            parser.exit(2, f"claims.py: --only: unknown claim(s) {', '.join(sorted(unknown))}; "
                           f"known: {', '.join(c.name for c in claims)}\n")
        claims = [c for c in claims if c.name in wanted]
    if args.list:
        for c in claims:
            print(f"{c.name}: {len(c.commands)} command(s) -> {', '.join(shown(t) for t in c.targets)}")
        return 0
    if args.render:
        for c in claims:
            record = stored(c)
            if record is None:
                raise SystemExit(f"{c.name}: no results file; run --write --only {c.name}")
            for path in c.targets:
                if write_text(path, c, claim_text(c, record["summaries"], record["machine"])):
                    print(f"wrote {c.name}'s result into {shown(path)}")
        return 0
    ran_on, failed = machine(), []
    for i, c in enumerate(claims, start=1):
        print(f"[{i}/{len(claims)}] {c.name}", flush=True)
        summaries = run_claim(c)
        if args.write:
            atomic_write_json(c.results_file(), {"claim": c.name, "commands": c.commands, "machine": ran_on,
                                                 "summaries": summaries})
            for path in c.targets:
                write_text(path, c, claim_text(c, summaries, ran_on))
            continue
        problems = check(c, summaries, ran_on)
        if problems:
            failed.append(c.name)
            print("    differs:\n      " + "\n      ".join(problems), flush=True)
    if failed:
        print(f"{len(failed)} of {len(claims)} claims differ from their texts: {', '.join(failed)}")
        return 1
    print(f"{len(claims)} claims {'written' if args.write else 'reproduced to the figure'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
