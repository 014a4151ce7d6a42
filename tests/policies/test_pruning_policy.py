"""PruningPolicy: masks computed on schedule, kept exactly at zero by the scheduler's masking, resumable."""
import io

import pytest
import torch
from torch import nn

from distill_ee.errors import ScheduleError
from distill_ee.policies.base import HookContext
from distill_ee.policies.pruning import PruningPolicy
from distill_ee.pruning.agp import AutomatedGradualPruner, L1RankedStructureParameterPruner_AGP, agp_target_sparsity
from distill_ee.pruning.level import SparsityLevelParameterPruner
from distill_ee.pruning.masks import apply_masks, create_masks, sparsity
from distill_ee.pruning.sensitivity import SensitivityPruner

MINIBATCHES = 3


def tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3), nn.ReLU(), nn.Conv2d(6, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 4)
    )


def scheduled(policy, starting_epoch, ending_epoch, frequency=1):
    policy.starting_epoch, policy.ending_epoch, policy.frequency = starting_epoch, ending_epoch, frequency
    return policy


def is_due(policy, epoch):
    window = policy.starting_epoch <= epoch < policy.ending_epoch
    return window and (epoch - policy.starting_epoch) % policy.frequency == 0


class MiniLoop:
    """Drives policies as the scheduler does: every set mask is applied after the policies' minibatch-begin
    hooks and right after each optimizer step."""

    def __init__(self, model, policies, momentum=0.9, weight_decay=5e-3, lr=0.05, minibatches=MINIBATCHES):
        self.model = model
        self.policies = policies
        self.masks = create_masks(model)
        self.params = dict(model.named_parameters())
        self.optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
        gen = torch.Generator().manual_seed(1)
        self.batches = [(torch.randn(8, 1, 8, 8, generator=gen), torch.randint(0, 4, (8,), generator=gen))
                        for _ in range(minibatches)]
        self.after_step = []

    def ctx(self, epoch, minibatch_id=None, loss=None):
        return HookContext(epoch=epoch, model=self.model, optimizer=self.optimizer, masks=self.masks,
                           minibatch_id=minibatch_id, minibatches_per_epoch=len(self.batches), loss=loss)

    def run_epoch(self, epoch):
        due = [p for p in self.policies if is_due(p, epoch)]
        for policy in due:
            policy.on_epoch_begin(self.ctx(epoch))
        for minibatch_id, (x, y) in enumerate(self.batches):
            for policy in due:
                policy.on_minibatch_begin(self.ctx(epoch, minibatch_id))
            apply_masks(self.params, self.masks, is_forward=True)
            loss = nn.functional.cross_entropy(self.model(x), y)
            self.optimizer.zero_grad()
            loss.backward()
            for policy in due:
                policy.before_parameter_optimization(self.ctx(epoch, minibatch_id, loss))
            self.optimizer.step()
            apply_masks(self.params, self.masks, is_forward=False)
            for policy in due:
                policy.on_minibatch_end(self.ctx(epoch, minibatch_id, loss))
            self.after_step.append({n: (p.detach().clone(), self.masks[n].mask) for n, p in self.params.items()})
        for policy in due:
            policy.on_epoch_end(self.ctx(epoch))


def masked_values(param, masker):
    return param.detach()[masker.mask == 0]


def test_masked_weights_stay_exactly_zero_under_sgd_with_momentum_and_weight_decay():
    model = tiny_model()
    filters = L1RankedStructureParameterPruner_AGP("f", 0.1, 0.5, group_type="Filters", weights=["2.weight"])
    fine = AutomatedGradualPruner("e", initial_sparsity=0.2, final_sparsity=0.8, weights=["5.weight"])
    loop = MiniLoop(model, [scheduled(PruningPolicy(filters), 0, 4), scheduled(PruningPolicy(fine), 0, 4)])
    for epoch in range(6):
        loop.run_epoch(epoch)
    for snapshot in loop.after_step:
        for name in ("2.weight", "5.weight"):
            weight, mask = snapshot[name]
            if mask is not None:
                assert weight[mask == 0].abs().max() == 0
    conv = loop.params["2.weight"].detach()
    assert conv.reshape(8, -1).abs().sum(dim=1).eq(0).sum() == 4
    assert sparsity(loop.params["5.weight"]) == pytest.approx(int(0.8 * 512) / 512)


def test_agp_policy_prunes_to_the_hand_computed_target_at_each_due_epoch():
    model = tiny_model()
    pruner = AutomatedGradualPruner("agp", initial_sparsity=0.05, final_sparsity=0.8, weights=["5.weight"])
    loop = MiniLoop(model, [scheduled(PruningPolicy(pruner), 0, 10, 2)], minibatches=1)
    expected = {0: 0.05, 2: 0.48359375, 4: 0.70625, 6: 0.78828125, 8: 0.8}
    for epoch in range(10):
        loop.run_epoch(epoch)
        if epoch in expected:
            assert agp_target_sparsity(0.05, 0.8, epoch, 0, 10, 2) == pytest.approx(expected[epoch])
            assert sparsity(loop.masks["5.weight"].mask) == pytest.approx(int(expected[epoch] * 512) / 512)


def first_minibatch_gradient(args):
    model = tiny_model()
    policy = scheduled(PruningPolicy(SparsityLevelParameterPruner("l", {"2.weight": 0.5}), args), 0, 2)
    loop = MiniLoop(model, [policy])
    policy.on_epoch_begin(loop.ctx(0))
    apply_masks(loop.params, loop.masks, is_forward=True)
    x, y = loop.batches[0]
    nn.functional.cross_entropy(model(x), y).backward()
    return loop.params["2.weight"].grad[loop.masks["2.weight"].mask == 0]


def test_mask_gradients_zeroes_the_gradients_of_masked_weights():
    assert first_minibatch_gradient({"mask_gradients": True, "mask_on_forward_only": True}).abs().max() == 0
    assert first_minibatch_gradient({"mask_on_forward_only": True}).abs().max() > 0


def test_mask_on_forward_only_lets_the_step_move_masked_weights_until_the_next_forward():
    model = tiny_model()
    policy = scheduled(PruningPolicy(SparsityLevelParameterPruner("l", {"2.weight": 0.5}),
                                     {"mask_on_forward_only": True}), 0, 3)
    loop = MiniLoop(model, [policy])
    loop.run_epoch(0)
    masker = loop.masks["2.weight"]
    weight, mask = loop.after_step[-1]["2.weight"]
    assert weight[mask == 0].abs().max() > 0
    apply_masks(loop.params, loop.masks, is_forward=True)
    assert masked_values(loop.params["2.weight"], masker).abs().max() == 0


def test_use_double_copies_updates_the_unmasked_weights_with_gradients_of_the_masked_ones():
    model = tiny_model()
    args = {"mask_on_forward_only": True, "use_double_copies": True}
    policy = scheduled(PruningPolicy(SparsityLevelParameterPruner("l", {"2.weight": 0.5}), args), 0, 2)
    loop = MiniLoop(model, [policy], momentum=0.0, weight_decay=0.0, lr=0.1)
    weight = loop.params["2.weight"]
    original = weight.detach().clone()
    policy.on_epoch_begin(loop.ctx(0))
    apply_masks(loop.params, loop.masks, is_forward=True)
    assert masked_values(weight, loop.masks["2.weight"]).abs().max() == 0
    x, y = loop.batches[0]
    nn.functional.cross_entropy(model(x), y).backward()
    policy.before_parameter_optimization(loop.ctx(0, 0))
    loop.optimizer.step()
    apply_masks(loop.params, loop.masks, is_forward=False)
    assert torch.allclose(weight.detach(), original - 0.1 * weight.grad)


def test_keep_mask_makes_the_mask_permanent_after_the_last_epoch():
    def masked_after_later_steps(keep_mask):
        model = tiny_model()
        args = {"mask_on_forward_only": True, "use_double_copies": True, "keep_mask": keep_mask}
        policy = scheduled(PruningPolicy(SparsityLevelParameterPruner("l", {"2.weight": 0.5}), args), 0, 2)
        loop = MiniLoop(model, [policy])
        for epoch in range(4):
            loop.run_epoch(epoch)
        weight, mask = loop.after_step[-1]["2.weight"]
        return weight[mask == 0], loop.masks["2.weight"]

    kept, masker = masked_after_later_steps(True)
    assert kept.abs().max() == 0
    assert not masker.mask_on_forward_only and not masker.use_double_copies
    not_kept, _ = masked_after_later_steps(False)
    assert not_kept.abs().max() > 0


class CountingLevelPruner(SparsityLevelParameterPruner):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = []

    def set_param_mask(self, param, param_name, zeros_mask_dict, meta):
        self.calls.append(meta["current_epoch"])
        super().set_param_mask(param, param_name, zeros_mask_dict, meta)


def test_mini_batch_pruning_frequency_recomputes_masks_within_due_epochs():
    pruner = CountingLevelPruner("l", {"2.weight": 0.5})
    loop = MiniLoop(tiny_model(), [scheduled(PruningPolicy(pruner, {"mini_batch_pruning_frequency": 2}), 0, 2)])
    loop.run_epoch(0)
    loop.run_epoch(1)
    # epoch begin of 0 and 1, then global minibatches 2 (epoch 0, id 2) and 4 (epoch 1, id 1)
    assert pruner.calls == [0, 0, 1, 1]


def test_policy_levels_replace_the_pruners_levels():
    loop = MiniLoop(tiny_model(), [])
    pruner = SparsityLevelParameterPruner("l", {"*": 0.2})
    policy = scheduled(PruningPolicy(pruner, {"levels": {"2.weight": 0.5}}), 0, 1)
    policy.on_epoch_begin(loop.ctx(0))
    assert sparsity(loop.masks["2.weight"].mask) == pytest.approx(0.5)
    assert loop.masks["0.weight"].mask is None


def test_discard_masks_at_minibatch_end_drops_the_masks():
    args = {"discard_masks_at_minibatch_end": True}
    policy = scheduled(PruningPolicy(SparsityLevelParameterPruner("l", {"2.weight": 0.5}), args), 0, 1)
    loop = MiniLoop(tiny_model(), [policy])
    loop.run_epoch(0)
    assert loop.masks["2.weight"].mask is None


def run_resumable(epochs, resume_at=None):
    """Train with a sensitivity pruner; optionally checkpoint and resume into fresh objects."""
    def fresh():
        policy = scheduled(PruningPolicy(SensitivityPruner("s", {"2.weight": 0.6, "5.weight": 0.6})), 0, epochs)
        return MiniLoop(tiny_model(), [policy])

    loop = fresh()
    for epoch in range(epochs):
        if epoch == resume_at:
            buffer = io.BytesIO()
            torch.save({
                "model": loop.model.state_dict(),
                "optimizer": loop.optimizer.state_dict(),
                "masks": {n: m.state_dict() for n, m in loop.masks.items()},
                "policy": loop.policies[0].state_dict(),
            }, buffer)
            buffer.seek(0)
            state = torch.load(buffer, weights_only=True)
            loop = fresh()
            loop.model.load_state_dict(state["model"])
            loop.optimizer.load_state_dict(state["optimizer"])
            for name, masker in loop.masks.items():
                masker.load_state_dict(state["masks"][name])
            loop.policies[0].load_state_dict(state["policy"])
        loop.run_epoch(epoch)
    return loop.model.state_dict()


def test_a_resumed_run_matches_an_uninterrupted_one_exactly():
    straight = run_resumable(4)
    resumed = run_resumable(4, resume_at=2)
    for name, value in straight.items():
        assert torch.equal(value, resumed[name]), name


def test_state_dict_carries_the_pruner_state():
    pruner = SensitivityPruner("s", {"w": 1.0})
    pruner.stddev["w"] = 0.25
    policy = PruningPolicy(pruner)
    policy.is_initialized = True
    restored = PruningPolicy(SensitivityPruner("s", {"w": 1.0}))
    restored.load_state_dict(policy.state_dict())
    assert restored.is_initialized and restored.pruner.stddev == {"w": 0.25}


def test_bad_policy_arguments_are_schedule_errors():
    pruner = SparsityLevelParameterPruner("l", {"*": 0.5})
    with pytest.raises(ScheduleError, match="did you mean .fold_batchnorm."):
        PruningPolicy(pruner, {"fold_batchnom": True})
    with pytest.raises(ScheduleError, match="mask_on_forward_only"):
        PruningPolicy(pruner, {"mask_gradients": True})
    with pytest.raises(ScheduleError, match="mini_batch_pruning_frequency"):
        PruningPolicy(pruner, {"mini_batch_pruning_frequency": -1})
    assert PruningPolicy.kind == "pruner"


def test_masks_recomputed_each_minibatch_start_from_the_unmasked_weights_with_double_copies():
    from distill_ee.pruning.splicing import SplicingPruner

    model = tiny_model()
    pruner = SplicingPruner("dns", {"2.weight": 0.2}, low_thresh_mult=0.9, hi_thresh_mult=1.1)
    args = {"mask_on_forward_only": True, "use_double_copies": True, "mini_batch_pruning_frequency": 1}
    policy = scheduled(PruningPolicy(pruner, args), 0, 2)
    loop = MiniLoop(model, [policy], momentum=0.0, weight_decay=0.0)
    weight, masker = loop.params["2.weight"], loop.masks["2.weight"]
    policy.on_epoch_begin(loop.ctx(0))
    for minibatch_id, (x, y) in enumerate(loop.batches):
        before = weight.detach().clone()
        policy.on_minibatch_begin(loop.ctx(0, minibatch_id))
        apply_masks(loop.params, loop.masks, is_forward=True)
        assert torch.equal(masker.unmasked_copy, before)
        assert torch.equal(weight.detach(), before * masker.mask)
        loop.optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        policy.before_parameter_optimization(loop.ctx(0, minibatch_id))
        assert torch.equal(weight.detach(), before)
        loop.optimizer.step()
        apply_masks(loop.params, loop.masks, is_forward=False)


def test_validate_schedule_rejects_an_agp_window_with_a_single_pruning_epoch():
    policy = PruningPolicy(AutomatedGradualPruner("agp", 0.1, 0.5, weights=["w"]))
    scheduled(policy, 0, 2, 1).validate_window()
    with pytest.raises(ScheduleError, match="AGP"):
        scheduled(policy, 0, 1, 1).validate_window()
