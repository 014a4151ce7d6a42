"""Fuzzing the files a user hands the tools besides schedules: every mutant is accepted (and then used as the
tool uses it, without failing) or refused with one line; never another exception, never a hang. A refusal by a
file's reader is located in the file (``mutant.yaml:LINE: ``).

Surfaces: a tier file (``plan-split``), a cascade file (``cascade``), an activation statistics file and a
quantization config (``--qe-stats-file``, ``--qe-config-file``), and a checkpoint's structure steps and saved
exit state (``--resume-from``). Mutations: those of ``mutation_support`` for the YAML files; for checkpoints a
field deleted, renamed or replaced (by garbage values and tensors of other shapes and dtypes). Run it offline
with another seed and count; it prints per surface how many mutants were accepted and refused, the other
exceptions and hangs (both must be 0), and the slowest::

    python tests/test_user_files_fuzz.py --seed 1 --count 5000
"""
import argparse
import copy
import random
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

# run as a script: the package is the checkout's, mutation_support lies beside this file
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from distill_ee import EarlyExits, load_schedule, save_checkpoint  # noqa: E402
from distill_ee.apputils.cascade_cli import load_member, read_config  # noqa: E402
from distill_ee.apputils.datasets import dataset_info  # noqa: E402
from distill_ee.apputils.models import create_model  # noqa: E402
from distill_ee.apputils.quantize_eval import prepare_quantizer, quantize_trained  # noqa: E402
from distill_ee.apputils.split_cli import check_profiles, read_tiers  # noqa: E402
from distill_ee.cascade import Cascade, cascade_rules  # noqa: E402
from distill_ee.checkpoint import load_checkpoint, read_checkpoint  # noqa: E402
from distill_ee.deploy.tiers import SplitInputs, check_simulation, plan, reach_of  # noqa: E402
from distill_ee.errors import DistillEEError, ScheduleError  # noqa: E402
from distill_ee.quantization.stats import collect_stats  # noqa: E402
from distill_ee.thinning.remove import remove_filters  # noqa: E402
from mutation_support import ODD_VALUES, mutant, mutate_tree  # noqa: E402
from support import Hung, lenet_with_exit, no_hang  # noqa: E402

pytestmark = pytest.mark.slow

MUTANTS_PER_SURFACE = 40
#: seconds one mutant may take before it counts as a hang (a case takes milliseconds to a second)
HANG = 30.0
LOCATED = re.compile(r"^mutant\.yaml:\d+: ")
ROOT = Path(__file__).resolve().parents[1]

TIERS = """\
tiers:
  - {name: device, speed: 0.25}
  - name: edge
    profile: {stages: [0.001, 0.002, 0.004], branches: [0.0005, 0.0005]}
  - {name: cloud, speed: 1.0}
links:
  - {bandwidth_mbps: 20, latency_ms: 10}
  - {bandwidth_mbps: 100, latency_ms: 20}
"""
#: what the planner gets with the tier file: three stages (two exits), as plan-split measures them
SPLIT = SplitInputs([1e-3, 2e-3, 4e-3], [5e-4, 5e-4], [3136, 4000, 2000], reach_of([0.4, 0.3, 0.3]), [True, True])
CASCADE = """\
dataset: mnist5k
members:
  - name: small
    checkpoint: {small}
    rule: {{kind: max_prob, threshold: 0.9}}
  - name: big
    checkpoint: {big}
    arch: lenet_mnist
"""
QE_CONFIG = """\
quantizers:
  qe:
    class: PostTrainLinearQuantizer
    bits_activations: 8
    bits_parameters: 8
    bits_accum: 32
    mode: {activations: ASYMMETRIC_UNSIGNED, weights: SYMMETRIC}
    per_channel_wts: true
    clip_acts: AVG
    overrides:
      fc2: {bits_activations: null, bits_weights: null}
"""


# --------------------------------------------------------------------------- what each surface starts from
def images(n: int = 8) -> torch.Tensor:
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(3))


def quant_args(**flags: Any) -> argparse.Namespace:
    """The app's quantization flags (as ``--qe`` gives them), updated by ``flags``."""
    args = dict(quantize_eval=True, qe_config_file=None, qe_stats_file=None, qe_calibration=None, valid_size=0.1,
                qe_mode=None, qe_mode_acts=None, qe_mode_wts=None, qe_bits_acts=None, qe_bits_wts=None,
                qe_bits_accum=None, qe_per_channel=False, qe_clip_acts=None, qe_clip_n_stds=None,
                qe_no_quant_layers=None, qe_dynamic=False)
    args.update(flags)
    return argparse.Namespace(**args)


def structured_checkpoints(directory: Path) -> Dict[str, Dict[str, Any]]:
    """Checkpoint states whose structure steps cover every kind: exits and thinning (resnet20_cifar), exits and
    quantization-aware training (lenet), and each routing class (resnet20_cifar)."""
    out = {}
    torch.manual_seed(0)
    model = create_model("resnet20_cifar", 10, 1)
    EarlyExits.from_config({"exits": {"exit1": {"attach": "layer1", "branch": ["adaptive_avgpool", "flatten",
                                                                               "linear"]}}},
                           model, num_classes=10, input_shape=(1, 28, 28))
    with torch.no_grad():
        model.layer1[0].conv1.weight[:4] = 0
        model.layer2[0].conv1.weight[:4] = 0
    remove_filters(model)
    out["resnet20_cifar:thinned"] = model
    for arch, schedule in (("lenet_mnist", "lenet_mnist.qat_exit.yaml"),
                           ("resnet20_cifar", "resnet20_mnist.skipnet.yaml"),
                           ("resnet20_cifar", "resnet20_mnist.blockdrop.yaml")):
        torch.manual_seed(0)
        model = create_model(arch, 10, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        load_schedule(model, optimizer, str(ROOT / "schedules" / schedule), example_input=torch.zeros(1, 1, 28, 28))
        out[f"{arch}:{schedule}"] = model
    states = {}
    for key, model in out.items():
        path = directory / (key.replace(":", "_") + ".pth.tar")
        save_checkpoint(path, model, arch=key.split(":")[0], dataset="mnist5k", input_shape=[1, 28, 28],
                        num_classes=10)
        states[key] = read_checkpoint(path)
    return states


class Bases:
    """The intact files of every surface, written once into ``directory``."""

    def __init__(self, directory: Path):
        self.directory = directory
        small, big = directory / "small" / "checkpoint.pth.tar", directory / "big" / "checkpoint.pth.tar"
        for path, with_exit in ((small, True), (big, False)):
            path.parent.mkdir()
            save_checkpoint(path, lenet_with_exit(with_exit), arch="lenet_mnist", dataset="mnist5k", input_shape=[1, 28, 28],
                            num_classes=10)
        self.cascade = CASCADE.format(small=small, big=big)
        self.stats = yaml.safe_dump(collect_stats(lenet_with_exit(), [images(16)]), sort_keys=False)
        self.checkpoints = structured_checkpoints(directory)


# --------------------------------------------------------------------------- using what was accepted
def use_tiers(path: Path, bases: Bases) -> None:
    tiers, links = read_tiers(str(path))
    check_profiles(tiers, 3, 2)
    best = plan(SPLIT, tiers, links)[0]
    assert best.latency >= 0 and best.latency == best.latency
    check_simulation(best.latency, 20)


def use_cascade(path: Path, bases: Bases) -> None:
    spec = read_config(str(path))
    info = dataset_info(spec["dataset"], spec["data"])
    members = [load_member(m, info) for m in spec["members"]]
    rules = cascade_rules()
    criteria = [rules[m["rule"]["kind"]]() for m in spec["members"][:-1]]
    cascade = Cascade(members, criteria, [m["rule"].get("threshold") for m in spec["members"][:-1]])
    with torch.no_grad():
        logits = cascade.simulate(images(4))
    assert len(logits) == len(members) and all(torch.isfinite(t).all() for t in logits)


def quantized_answer(args: argparse.Namespace) -> None:
    """What the app does with --qe: the quantizer prepared before training, the model quantized after it."""
    model = lenet_with_exit().eval()
    quantizer = prepare_quantizer(args, model, None, torch.zeros(1, 1, 28, 28))
    valid = [(images(16), torch.zeros(16, dtype=torch.long))]
    quantize_trained(args, quantizer, model, valid, None if quantizer.stats is not None else _NoRunDir())
    with torch.no_grad():
        out = model(images(4))
    assert torch.isfinite(out).all(), "quantized outputs that are not finite"


class _NoRunDir:
    """A run directory whose files go to a temporary folder."""

    def file(self, name: str) -> str:
        import tempfile

        return str(Path(tempfile.mkdtemp()) / name)


def use_stats(path: Path, bases: Bases) -> None:
    quantized_answer(quant_args(qe_stats_file=str(path)))


def use_qe_config(path: Path, bases: Bases) -> None:
    quantized_answer(quant_args(qe_config_file=str(path)))


YAML_SURFACES: Dict[str, Tuple[Callable[[Bases], str], Callable[[Path, Bases], None], str]] = {
    "tier file": (lambda b: TIERS, use_tiers, "tiers"),
    "cascade file": (lambda b: b.cascade, use_cascade, "members"),
    "statistics file": (lambda b: b.stats, use_stats, "conv1"),
    "quantization config": (lambda b: QE_CONFIG, use_qe_config, "quantizers"),
}
#: what replaces a field of a checkpoint: the odd YAML values, and tensors of the wrong shape or dtype
CHECKPOINT_VALUES = ODD_VALUES + [torch.tensor([4, 5, 99]), torch.tensor([-1]), torch.zeros(3, 3),
                                  torch.tensor([0.5, 1.5]), torch.tensor([], dtype=torch.long), (1, 28, 28),
                                  [1, 28, 28], [3, 32, 32], [0, 0, 0]]


def checkpoint_mutant(rng: random.Random, state: Dict[str, Any]) -> Dict[str, Any]:
    """``state`` with one field of its structure steps or of its exits' saved state mutated."""
    state = copy.deepcopy(state)
    extra = [k for k in state["state_dict"] if k.endswith("_extra_state")]
    if extra and rng.random() < 0.25:
        mutate_tree(rng, state["state_dict"], CHECKPOINT_VALUES) if rng.random() < 0.1 else \
            mutate_tree(rng, {"x": state["state_dict"][rng.choice(extra)]}, CHECKPOINT_VALUES)
    else:
        mutate_tree(rng, {"structure": state["structure"]}, CHECKPOINT_VALUES)
    return state


def use_checkpoint(state: Dict[str, Any], arch: str) -> None:
    model = create_model(arch, 10, 1)
    load_checkpoint(model, state)
    with torch.no_grad():
        out = model.eval()(images(4))
    assert torch.isfinite(out).all(), "outputs that are not finite"


# --------------------------------------------------------------------------- one case
def run_case(bases: Bases, surface: str, index: int, seed: int, directory: Path) -> Tuple[str, str]:
    """('accepted' | 'refused' | 'other' | 'hang', detail) of mutant ``index`` of ``surface``."""
    rng = random.Random(f"{seed}:{surface}:{index}")
    try:
        with no_hang(HANG):
            return _run(bases, surface, rng, directory)
    except Hung:
        return "hang", f"{surface} mutant {index} of seed {seed}"


def _run(bases: Bases, surface: str, rng: random.Random, directory: Path) -> Tuple[str, str]:
    detail = ""
    try:
        if surface in YAML_SURFACES:
            base, use, key = YAML_SURFACES[surface]
            text = mutant(rng, base(bases), key=key)
            path = directory / "mutant.yaml"
            path.write_bytes(text.encode("utf-8", "surrogatepass"))
            detail = text
            try:
                use(path, bases)
            except ScheduleError as err:
                if not str(err).startswith(f"{path}:") and not LOCATED.match(str(err)):
                    return "other", f"not located: {err}\n--- mutant:\n{detail}"
                return _refused(err, detail)
        else:
            key = rng.choice(sorted(bases.checkpoints))
            state = checkpoint_mutant(rng, bases.checkpoints[key])
            detail = f"{key}: {state['structure']}"[:4000]
            use_checkpoint(state, key.split(":")[0])
        return "accepted", ""
    except DistillEEError as err:
        return _refused(err, detail)
    except Hung:
        raise
    except Exception as exc:  # noqa: BLE001  (the point: anything else is a failure to report)
        return "other", f"{type(exc).__name__}: {exc}\n--- mutant:\n{detail}"


def _refused(err: Exception, detail: str) -> Tuple[str, str]:
    if "\n" in str(err) or not str(err):
        return "other", f"not one line: {err!r}\n--- mutant:\n{detail}"
    return "refused", str(err)


SURFACES = [*YAML_SURFACES, "checkpoint"]


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    return Bases(tmp_path_factory.mktemp("bases"))


@pytest.mark.parametrize("surface", SURFACES)
def test_a_mutated_user_file_is_used_or_refused_in_one_line(surface, bases, tmp_path):
    outcomes = [run_case(bases, surface, i, 0, tmp_path) for i in range(MUTANTS_PER_SURFACE)]
    failures = [detail for outcome, detail in outcomes if outcome in ("other", "hang")]
    assert not failures, failures[0]
    assert any(outcome == "refused" for outcome, _ in outcomes)


def main() -> None:
    """Run ``--count`` mutants per surface with ``--seed``; print the counts."""
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--surface", choices=SURFACES, action="append")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "bases").mkdir()
        bases = Bases(Path(tmp) / "bases")
        for surface in args.surface or SURFACES:
            counts: Dict[str, int] = {"accepted": 0, "refused": 0, "other": 0, "hang": 0}
            slowest, failures = 0.0, []
            for i in range(args.count):
                start = time.perf_counter()
                outcome, detail = run_case(bases, surface, i, args.seed, Path(tmp))
                slowest = max(slowest, time.perf_counter() - start)
                counts[outcome] += 1
                if outcome in ("other", "hang"):
                    failures.append(detail)
            print(f"{surface}: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + f"; slowest {slowest:.2f} s",
                  flush=True)
            kinds: Dict[str, List[str]] = {}
            for detail in failures:
                kinds.setdefault(detail.split("\n")[0][:100], []).append(detail)
            for kind, details in kinds.items():
                print(f"  {len(details)} x {kind}\n    " + details[0].replace("\n", "\n    ")[:1500])


if __name__ == "__main__":
    main()
