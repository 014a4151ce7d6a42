"""A model that reads token ids (nn.Embedding first): exits attach, train with the scheduler's hooks, leave
early for real as they do simulated, and every dummy input made for it is int64 ids within the example's range."""
import pytest
import torch
from torch import nn

import distill_ee
from distill_ee import schedule_from_text
from distill_ee.early_exit import EarlyExits
from distill_ee.errors import DistillEEError
from distill_ee.inputs import InputSpec
from text_support import CLASSES, TOKENS, MaskedTextClassifier, TextClassifier, token_ids

SCHEDULE = """\
version: 1
early_exits:
  exits:
    class: EarlyExit
    exits:
      exit1: {attach: encoder.layers.1, branch: [flatten, linear], loss_weight: 0.3}
      exit2: {attach: encoder.layers.3, branch: [flatten, linear], loss_weight: 0.3}
policies:
  - early_exit: {instance_name: exits}
    starting_epoch: 0
    ending_epoch: 10
"""
#: the example batch holds ids 0 .. 9 only: dummy inputs must stay within them
EXAMPLE = torch.arange(2 * TOKENS).reshape(2, TOKENS) % 10


def attached(make=TextClassifier, schedule: str = SCHEDULE):
    torch.manual_seed(0)
    model = make()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    scheduler = schedule_from_text(model, optimizer, schedule, example_input=EXAMPLE)
    return model, optimizer, scheduler


def toy_task(n: int = 64):
    """Ids whose class is the first token's id modulo the class count."""
    x = token_ids(n, seed=1)
    return x, x[:, 0] % CLASSES


def test_exits_attach_to_a_token_id_model_and_record_its_dtype_and_range():
    model, _, _ = attached()
    exit_set = EarlyExits.of(model).exit_set
    assert exit_set.input_spec == InputSpec((TOKENS,), "int64", 0, 10)
    step = distill_ee.structure_steps(model)[0]
    assert (step["input_shape"], step["input_dtype"], step["input_range"]) == ([TOKENS], "int64", [0, 10])


def test_every_dummy_input_made_for_the_model_is_int64_ids_within_the_examples_range():
    seen = []
    torch.manual_seed(0)
    model = TextClassifier()
    model.embed.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    schedule_from_text(model, torch.optim.SGD(model.parameters(), lr=0.1), SCHEDULE, example_input=EXAMPLE)
    exits = EarlyExits.of(model)
    exits.exit_macs()  # the costs
    exits.multi_exit_model()  # the stages, checked on a dummy batch
    assert len(seen) > 3
    assert all(x.dtype == torch.int64 and 0 <= int(x.min()) and int(x.max()) < 10 for x in seen)


def test_joint_training_with_the_scheduler_hooks_lowers_every_exits_loss():
    model, optimizer, scheduler = attached()
    x, y = toy_task()
    before = exit_losses(model, x, y)
    model.train()
    for epoch in range(3):
        scheduler.on_epoch_begin(epoch)
        for i in range(8):
            xb, yb = x[8 * i: 8 * i + 8], y[8 * i: 8 * i + 8]
            scheduler.on_minibatch_begin(epoch, i, 8)
            loss = nn.functional.cross_entropy(model(xb), yb)
            loss = scheduler.before_backward_pass(epoch, i, 8, loss, target=yb)
            optimizer.zero_grad()
            loss.backward()
            scheduler.before_parameter_optimization(epoch, i, 8)
            optimizer.step()
            scheduler.on_minibatch_end(epoch, i, 8)
        scheduler.on_epoch_end(epoch)
    after = exit_losses(model, x, y)
    assert all(a < b for a, b in zip(after, before)), (before, after)


def exit_losses(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list:
    multi = EarlyExits.of(model).multi_exit_model().eval()
    with torch.no_grad():
        return [float(nn.functional.cross_entropy(z, y)) for z in multi.simulate(x)]


def test_real_early_exit_on_token_ids_matches_the_simulated_exits():
    model, _, _ = attached()
    multi = EarlyExits.of(model).multi_exit_model().eval()
    x = token_ids(40, seed=2)
    with torch.no_grad():
        simulated = multi.simulate(x)
        entropies = [multi.criteria[0].entropy(z).sort().values for z in simulated[:-1]]
        multi.set_thresholds([float((h[15] + h[16]) / 2) for h in entropies])
        logits, index = multi(x)
        sim_logits, sim_index = multi.decide(multi.simulate(x))
        assert torch.allclose(simulated[-1], model.eval()(x), atol=1e-5)
    assert torch.equal(index, sim_index) and torch.allclose(logits, sim_logits, atol=1e-4)
    assert 0 < int((index == 0).sum()) < len(x)


def test_a_checkpoint_of_a_token_id_model_restores_its_exits_on_a_fresh_model(tmp_path):
    model, optimizer, scheduler = attached()
    distill_ee.save_checkpoint(tmp_path / "c.pth.tar", model, optimizer=optimizer, scheduler=scheduler)
    fresh = TextClassifier()
    distill_ee.load_checkpoint(fresh, tmp_path / "c.pth.tar")
    assert EarlyExits.of(fresh).exit_set.input_spec == InputSpec((TOKENS,), "int64", 0, 10)
    x = token_ids(5)
    with torch.no_grad():
        assert torch.allclose(fresh.eval()(x), model.eval()(x))


def test_a_forward_with_defaulted_extra_arguments_is_staged_with_them_held():
    model, _, _ = attached(MaskedTextClassifier)
    multi = EarlyExits.of(model).multi_exit_model().eval()
    x = token_ids(6)
    with torch.no_grad():
        assert torch.allclose(multi.simulate(x)[-1], model.eval()(x), atol=1e-5)


class NeedsLengths(TextClassifier):
    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(ids)).mean(dim=1))


def test_a_forward_whose_extra_argument_has_no_default_is_refused_in_one_located_line():
    model = NeedsLengths()
    with pytest.raises(DistillEEError, match="missing 1 required positional argument: 'lengths'") as err:
        schedule_from_text(model, torch.optim.SGD(model.parameters(), lr=0.1), SCHEDULE,
                           example_input=EXAMPLE)
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_the_exports_of_a_token_id_model_take_its_int64_ids(tmp_path):
    pytest.importorskip("onnxruntime")
    from distill_ee.deploy import MultiExitSession
    from distill_ee.early_exit.export import export_torchscript, load_exported
    from distill_ee.early_exit.onnx_export import export_onnx

    model, _, _ = attached()
    multi = EarlyExits.of(model).multi_exit_model().eval()
    export_torchscript(multi, tmp_path / "ts")
    export_onnx(multi, model, tmp_path / "onnx")
    x = token_ids(7)
    with torch.no_grad():
        want = multi.simulate(x)[-1]
        assert torch.allclose(load_exported(tmp_path / "ts").simulate(x)[-1], want, atol=1e-5)
    got = MultiExitSession(tmp_path / "onnx").simulate(x.numpy())[-1]
    assert float(abs(torch.from_numpy(got) - want).max()) < 1e-4


def test_a_step_without_input_dtype_replays_as_float_and_a_bad_range_is_one_line():
    from distill_ee.early_exit.exit_set import ExitSet
    from distill_ee.errors import CheckpointError

    model, _, _ = attached()
    step = distill_ee.structure_steps(model)[0]
    assert ExitSet.from_step(TextClassifier(), step).input_spec.dtype == "int64"
    old = {k: v for k, v in step.items() if k not in ("input_dtype", "input_range")}
    with pytest.raises(RuntimeError, match="FloatTensor"):  # an old step is a float input: floats, not ids
        ExitSet.from_step(TextClassifier(), old)
    with pytest.raises(CheckpointError, match="its input: ") as err:
        ExitSet.from_step(TextClassifier(), {**step, "input_range": ["a", 5]})
    assert "\n" not in str(err.value)
