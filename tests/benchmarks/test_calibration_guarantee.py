"""The guarantee benchmark's partitions: disjoint ones are independent draws (no image in two of them, as many
as fit), overlapping ones are drawn from all images each time."""
import importlib.util
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("calibration_guarantee", ROOT / "benchmarks" / "calibration_guarantee.py")
bench = importlib.util.module_from_spec(spec)
sys.modules["calibration_guarantee"] = bench
spec.loader.exec_module(bench)


def test_disjoint_partitions_share_no_image_and_stop_when_the_images_run_out():
    parts = bench.partitions(10_000, 700, 700, 100, disjoint=True, seed=0)
    assert len(parts) == 7  # 10,000 // 1,400
    seen = torch.cat([torch.cat([v, t]) for v, t in parts])
    assert seen.numel() == 7 * 1400 and seen.unique().numel() == seen.numel()
    assert all(v.numel() == 700 and t.numel() == 700 for v, t in parts)


def test_overlapping_partitions_are_each_split_disjointly_but_reuse_images():
    parts = bench.partitions(1_400, 700, 700, 5, disjoint=False, seed=0)
    assert len(parts) == 5
    for valid, test in parts:
        assert torch.cat([valid, test]).unique().numel() == 1400
    assert not torch.equal(parts[0][0], parts[1][0])
