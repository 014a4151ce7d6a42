"""Latency profiles: ways out of the model priced in measured seconds, and BranchyNet's rule on them."""
import numpy as np
import pytest
import torch

from distill_ee.deploy import MultiExitSession
from distill_ee.deploy.profile import LatencyProfile, profile_session
from distill_ee.early_exit import EarlyExits
from distill_ee.early_exit.calibrate import CalibrationTarget, calibrate, calibrate_exits
from distill_ee.early_exit.latency import latency_costs, profile_torch
from distill_ee.early_exit.onnx_export import export_onnx
from distill_ee.errors import ConfigError
from support import synthetic

#: stages of 10, 30 and 60 us, branches of 5 and 40 us, a backbone measured at 100 us (seconds per sample)
PROFILE = LatencyProfile("pytorch", 1, [10e-6, 30e-6, 60e-6], [5e-6, 40e-6], 100e-6)


def test_each_way_out_costs_the_stages_and_the_branches_on_the_way():
    costs = PROFILE.costs()
    assert costs["per_exit"] == pytest.approx([15e-6, 85e-6, 145e-6])
    assert costs["full"] == 100e-6 and costs["branches"] == [5e-6, 40e-6]
    assert latency_costs(PROFILE).macs_per_exit == pytest.approx([15e-6, 85e-6, 145e-6])


def test_branchynets_rule_flags_a_branch_that_costs_more_than_it_saves():
    # exit1: 5 us for everyone, saves 90 us for the 50% leaving: pays. exit2: 40 us for the 50% reaching it
    # (20 us), saves 60 us for the 20% leaving (12 us): does not.
    warnings = PROFILE.branch_check([0.5, 0.2, 0.3], ["exit1", "exit2"])
    assert len(warnings) == 1
    assert warnings[0].startswith("exit 'exit2' costs more time than it saves (pytorch, batch 1): its branch takes "
                                  "40.0 us per sample for the 50.0% of the samples that reach it (20.0 us on "
                                  "average), and leaving there saves 60.0 us for the 20.0% that leave (12.0 us)")
    assert PROFILE.branch_check([0.5, 0.4, 0.1], ["exit1", "exit2"]) == []  # 20 us against 24 us


def test_the_latency_target_meets_its_budget_in_time_not_in_macs():
    logits, targets = synthetic(strengths=(1.0, 3.0, 6.0))
    costs = latency_costs(PROFILE)
    result = calibrate(logits, targets, "entropy", costs.macs_per_exit, costs.full_macs,
                       CalibrationTarget("latency", (0.5,)), branch_macs=costs.branch_macs)
    assert result.chosen.macs_fraction <= 0.5 + 1e-9
    with pytest.raises(ConfigError, match="no threshold setting meets the budget"):
        calibrate(logits, targets, "entropy", costs.macs_per_exit, costs.full_macs,
                  CalibrationTarget("latency", (0.1,)), branch_macs=costs.branch_macs)  # 15% is the least


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = torch.nn.Conv2d(1, 4, 3), torch.nn.Conv2d(4, 4, 3)
        self.fc = torch.nn.Linear(4, 10)

    def forward(self, x):
        return self.fc(self.c2(self.c1(x)).mean(dim=(2, 3)))


@pytest.mark.slow
def test_both_runtimes_measure_every_stage_and_branch(tmp_path):
    torch.manual_seed(0)
    model = Net().eval()
    exits = EarlyExits.from_config({"exits": {"e1": {"attach": "c1", "branch": ["adaptive_avgpool", "flatten",
                                                                             "linear"]}}},
                                   model, num_classes=10, input_shape=(1, 10, 10))
    multi = exits.multi_exit_model().eval()
    x = torch.randn(16, 1, 10, 10)
    torch_profile = profile_torch(multi, model, x, batch_size=4, rounds=2)
    export_onnx(multi, model, tmp_path)
    ort_profile = profile_session(MultiExitSession(tmp_path, threads=1), x.numpy(), batch_size=4, rounds=2)
    for p, runtime in ((torch_profile, "pytorch"), (ort_profile, "onnxruntime")):
        assert p.runtime == runtime and p.batch_size == 4
        assert len(p.stages) == 2 and len(p.branches) == 1
        assert all(t > 0 and np.isfinite(t) for t in [*p.stages, *p.branches, p.backbone])
    with pytest.raises(ConfigError, match="needs a measured latency profile"):
        calibrate_exits(exits, [(x, torch.zeros(16, dtype=torch.long))], CalibrationTarget("latency", (0.5,)))
