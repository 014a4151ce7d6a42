"""Multi-tier placement: the planner's arithmetic, the per-tier files, and the processes that run them."""
import json
import time

import numpy as np
import pytest
import torch
from torch import nn

from distill_ee.deploy import MultiExitSession
from distill_ee.deploy.manifest import ManifestError
from distill_ee.deploy.tiers import (SAMPLE_OVERHEAD, WARMUP, Link, SplitInputs, Tier, TierRuntime, check_simulation,
                                     expected_latency, pause, plan, reach_of, sample_timeout, simulate,
                                     simulation_seconds, write_tiers)
from distill_ee.early_exit import EarlyExits
from distill_ee.early_exit.onnx_export import export_onnx
from distill_ee.errors import CheckpointError, ConfigError
from support import no_hang

#: three stages (two exits) of 1, 2 and 4 ms on this machine, branches of 0.5 ms; 1000 input bytes, 4000 after
#: stage 0, 2000 after stage 1; 40% of the samples leave at exit 1, 30% at exit 2
INPUTS = SplitInputs([1e-3, 2e-3, 4e-3], [0.5e-3, 0.5e-3], [1000, 4000, 2000], reach_of([0.4, 0.3, 0.3]),
                     [True, True])
TIERS = [Tier("device", speed=0.5), Tier("cloud", speed=2.0)]
LINKS = [Link(bandwidth=1e6, latency=5e-3)]  # 1 MB/s, 5 ms


def test_reach_is_what_earlier_exits_leave():
    assert reach_of([0.4, 0.3, 0.3]) == pytest.approx([1.0, 0.6, 0.3])


def test_expected_latency_adds_compute_on_each_tier_and_the_transfer_of_the_unsure_samples():
    # stage 0 and exit 1 on the device (speed 0.5): (1 + 0.5) / 0.5 = 3 ms for everyone; then 60% cross the
    # link with 4000 bytes: 5 + 4 = 9 ms; on the cloud (speed 2): stage 1 + branch (2.5 / 2) for 60%, stage 2
    # (4 / 2) for 30%
    p = expected_latency([0, 1, 1], INPUTS, TIERS, LINKS)
    assert p.compute == pytest.approx(3e-3 + 0.6 * 1.25e-3 + 0.3 * 2e-3)
    assert p.transfer == pytest.approx(0.6 * 9e-3)
    assert p.latency == pytest.approx(p.compute + p.transfer)
    assert p.per_tier == pytest.approx({"device": 3e-3, "cloud": 0.6 * 1.25e-3 + 0.3 * 2e-3})
    # everything in the cloud: the input crosses first (5 + 1 ms)
    assert expected_latency([1, 1, 1], INPUTS, TIERS, LINKS).transfer == pytest.approx(6e-3)


def test_every_placement_is_ranked_fastest_first():
    placements = plan(INPUTS, TIERS, LINKS)
    assert len(placements) == 4  # stages 0-2 cut at 0, 1, 2 or 3 between two tiers
    assert [p.latency for p in placements] == sorted(p.latency for p in placements)
    # all in the cloud: 6 ms to send the input, then (1.5 + 0.6 * 2.5 + 0.3 * 4) / 2 = 2.1 ms: 8.1 ms; all on the
    # device: (1.5 + 0.6 * 2.5 + 0.3 * 4) / 0.5 = 8.4 ms; device 0-1 then cloud: 6 + 0.3 * (5 + 2) + 0.3 * 2 = 8.7 ms;
    # device 0 then cloud: 3 + 0.6 * 9 + 0.6 * 1.25 + 0.3 * 2 = 9.75 ms
    assert [p.owner for p in placements] == [[1, 1, 1], [0, 0, 0], [0, 0, 1], [0, 1, 1]]
    assert [p.latency for p in placements] == pytest.approx([8.1e-3, 8.4e-3, 8.7e-3, 9.75e-3])
    three = plan(INPUTS, [Tier("a"), Tier("b"), Tier("c")], [LINKS[0], LINKS[0]])
    assert len(three) == 10  # C(3 + 2, 2)
    with pytest.raises(ValueError, match="3 tiers need 2 links"):
        plan(INPUTS, [Tier("a"), Tier("b"), Tier("c")], LINKS)


def test_a_tier_with_its_own_profile_uses_it():
    tier = Tier("phone", stage_seconds=[1.0, 2.0, 3.0], branch_seconds=[0.1, 0.2])
    assert tier.stage_time(2, INPUTS.stage_seconds) == 3.0 and tier.branch_time(0, INPUTS.branch_seconds) == 0.1


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.c3(torch.relu(self.c2(torch.relu(self.c1(x))))).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    torch.manual_seed(0)
    model = Net().eval()
    exits = EarlyExits.from_config({"exits": {"e1": {"attach": "c1", "branch": ["adaptive_avgpool", "flatten",
                                                                             "linear"]}}},
                                   model, num_classes=10, input_shape=(1, 12, 12))
    x = torch.randn(40, 1, 12, 12)
    with torch.no_grad():
        first = exits.multi_exit_model().eval().simulate(x)[0]
    entropy = -(first.softmax(1) * first.log_softmax(1)).sum(1)
    exits.set_thresholds([float(entropy.sort().values[19:21].mean())])  # about half leave at the exit
    directory = tmp_path_factory.mktemp("export")
    export_onnx(exits.multi_exit_model().eval(), model, directory)
    return MultiExitSession(directory, threads=1), x.numpy()


@pytest.mark.slow
def test_the_tiers_together_answer_like_the_whole_model(export, tmp_path):
    session, x = export
    placement = plan(SplitInputs([1e-4, 1e-4], [1e-5], [1, 1], [1.0, 0.5], [True]), TIERS, LINKS)[0]
    placement.owner = [0, 1]  # the exit on the device, the rest in the cloud
    files = write_tiers(session.manifest, placement, TIERS, LINKS, tmp_path)
    assert [f.name for f in files] == ["tier0_device.zip", "tier1_cloud.zip", "placement.json"]
    doc = json.loads((tmp_path / "placement.json").read_text())
    device, cloud = (TierRuntime(tmp_path / doc["files"][i], doc) for i in (0, 1))
    want_logits, want_index = session(x)
    for n in range(8):
        status, payload = device.run({0: x[n:n + 1]})
        if status == "next":
            status, payload = cloud.run(payload)
        logits, index = payload
        assert status == "done" and index == want_index[n]
        assert np.abs(logits[0] - want_logits[n]).max() < 1e-5


@pytest.mark.slow
def test_a_simulated_sample_waits_for_every_link_it_crosses_and_takes_the_sessions_exit(export, tmp_path):
    # how close the simulated latency comes to the plan is measured by benchmarks/tiers_simulation.py; here only
    # what cannot depend on the machine's load: the answers, and the link time as a lower bound
    session, x = export
    tiers = [Tier("device", speed=1.0), Tier("edge", speed=1.0)]
    links = [Link(bandwidth=1e6, latency=20e-3)]  # 20 ms, and the 4608 bytes after c1 at 1 MB/s
    placement = plan(SplitInputs([1e-4, 1e-4], [1e-5], [1, 1], [1.0, 0.5], [True]), tiers, links)[0]
    placement.owner = [0, 1]
    write_tiers(session.manifest, placement, tiers, links, tmp_path)
    result = simulate(tmp_path, x[:12], warmup=1)
    assert result["exits"] == session(x[:12])[1].tolist()
    assert len(result["latencies"]) == result["samples"] == 12
    crossed = links[0].seconds(8 * 12 * 12 * 4)  # the activations of c1 (float32)
    for exit_index, latency in zip(result["exits"], result["latencies"]):
        if exit_index == 1:  # went on to the edge
            assert latency >= crossed
    assert 0 in result["exits"] and 1 in result["exits"]  # some left on the device, some crossed


def test_the_wait_for_an_answer_scales_with_the_plan_and_a_long_simulation_is_refused_up_front():
    assert sample_timeout(1e-3) == 30.0  # never less than half a minute
    assert sample_timeout(10.0) == 210.0  # 20 times the plan's latency, plus 10 s
    assert simulation_seconds(0.1, 100) == pytest.approx((100 + WARMUP) * (0.1 + SAMPLE_OVERHEAD))
    check_simulation(0.1, 100)
    with pytest.raises(ConfigError, match=r"--simulate 5000: .* about 511 s \(at most 300 s\)"):
        check_simulation(0.1, 5000)


@pytest.mark.slow
def test_a_tier_process_that_dies_is_reported_at_once_not_waited_for(export, tmp_path):
    session, x = export
    placement = plan(SplitInputs([1e-4, 1e-4], [1e-5], [1, 1], [1.0, 0.5], [True]), TIERS, LINKS)[0]
    placement.owner = [0, 1]
    write_tiers(session.manifest, placement, TIERS, LINKS, tmp_path)
    (tmp_path / "tier1_cloud.zip").write_bytes(b"not a zip")
    with no_hang(), pytest.raises(ManifestError, match="tier process 1 exited with code 1"):
        simulate(tmp_path, x[:4], timeout=1000)


def test_a_pause_waits_at_least_its_time():
    for seconds in (0.0, 1e-4, 3e-3):
        start = time.perf_counter()
        pause(seconds)
        assert time.perf_counter() - start >= seconds


@pytest.mark.parametrize("name", ["../outside", "a/b", "", "x" * 101])
def test_a_tier_name_that_is_not_a_plain_file_name_is_refused_before_anything_is_written(export, tmp_path, name):
    session, _ = export
    tiers = [Tier("device"), Tier(name)]
    with pytest.raises(ConfigError, match="tier name must be a plain name"):
        write_tiers(session.manifest, expected_latency([0, 1], INPUTS, tiers, LINKS), tiers, LINKS, tmp_path / "t")
    assert not (tmp_path / "t").exists()


def test_a_missing_placement_is_an_error(tmp_path):
    with pytest.raises(CheckpointError, match="placement.json: cannot be read"):
        simulate(tmp_path, np.zeros((1, 1, 12, 12), np.float32))
