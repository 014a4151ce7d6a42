"""Multi-tier placement: the planner's arithmetic, the per-tier files, and the processes that run them."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from distill_ee.deploy import MultiExitSession
from distill_ee.deploy.profile import profile_session
from distill_ee.deploy.tiers import (Link, SplitInputs, Tier, TierRuntime, expected_latency, plan, reach_of,
                                     simulate, write_tiers)
from distill_ee.early_exit import EarlyExits
from distill_ee.early_exit.onnx_export import export_onnx
from distill_ee.errors import CheckpointError

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
def test_the_simulated_tiers_take_the_planned_time_within_20_percent(export, tmp_path):
    session, x = export
    tiers = [Tier("device", speed=0.5), Tier("edge", speed=1.0)]
    links = [Link(bandwidth=2e6, latency=3e-3)]  # 2 MB/s and 3 ms: the transfer dominates, as on real links
    taken = np.bincount(session(x)[1], minlength=2) / len(x)
    owner = [0, 1]
    profile = profile_session(session, x[:20], batch_size=1)
    inputs = SplitInputs(profile.stages, profile.branches, [x[:1].nbytes, 8 * 12 * 12 * 4], reach_of(list(taken)),
                         [True])
    placement = expected_latency(owner, inputs, tiers, links)
    write_tiers(session.manifest, placement, tiers, links, tmp_path)
    result = simulate(tmp_path, x[:30], timeout=60)
    assert result["samples"] == 30 and len(result["exits"]) == 30
    sim_taken = np.bincount(result["exits"], minlength=2) / 30
    planned = expected_latency(owner, SplitInputs(inputs.stage_seconds, inputs.branch_seconds, inputs.cut_bytes,
                                                  reach_of(list(sim_taken)), [True]), tiers, links).latency
    # the transfer (3 ms + 4608 bytes at 2 MB/s) is what dominates; the stages' own times are measured live
    assert abs(result["trimmed_mean"] / planned - 1) <= 0.2


def test_a_missing_placement_is_an_error(tmp_path):
    with pytest.raises(CheckpointError, match="placement.json: cannot be read"):
        simulate(tmp_path, np.zeros((1, 1, 12, 12), np.float32))
