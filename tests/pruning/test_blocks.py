"""group_type Blocks: L1 ranking of [repetitions, depth, 1, 1] blocks, laid out as Distiller's block pruner."""
import pytest
import torch

from distill_ee.errors import ScheduleError
from distill_ee.pruning.agp import L1RankedStructureParameterPruner_AGP, agp_target_sparsity
from distill_ee.pruning.masks import ParameterMasker
from distill_ee.pruning.ranked import L1RankedStructureParameterPruner
from distill_ee.schedule import schedule_from_text


def distiller_block_mask(param, fraction, block_shape):
    """Distiller's rank_and_prune_blocks, written out: view, sum |w| per block, cut at the k-th smallest."""
    reps, depth = block_shape[0], block_shape[1]
    f, c, kh, kw = param.shape
    if depth > 1:
        view_dims = (f * c // (reps * depth), reps * depth, kh * kw)
    else:
        view_dims = (f // reps, reps, -1)
    mags = param.reshape(*view_dims).abs().sum(dim=1).reshape(-1)
    k = int(fraction * mags.numel())
    threshold = torch.topk(mags, k, largest=False, sorted=True)[0][-1]
    binary_map = mags.gt(threshold).to(param.dtype)
    a = binary_map.reshape(view_dims[0], view_dims[2]).unsqueeze(1)
    return a.expand(*view_dims).contiguous().reshape(f, c, kh, kw)


def prune(block_shape, param, fraction):
    pruner = L1RankedStructureParameterPruner("b", "Blocks", fraction, ["w"], kwargs={"block_shape": block_shape})
    masks = {"w": ParameterMasker("w")}
    pruner.set_param_mask(param, "w", masks, {})
    return masks["w"].mask


def test_a_depth_block_is_that_many_consecutive_channels_at_one_kernel_position():
    w = torch.ones(2, 4, 1, 1)
    w[0, 0:2] = 0.1  # block (filter 0, channels 0-1) is the weakest of the four [1, 2, 1, 1] blocks
    mask = prune([1, 2, 1, 1], w, 0.25)
    expected = torch.ones(2, 4, 1, 1)
    expected[0, 0:2] = 0
    assert torch.equal(mask, expected)


def test_a_repetition_block_spans_consecutive_filters_at_one_channel_and_position():
    w = torch.ones(4, 1, 2, 1)
    w[2:4, 0, 1, 0] = 0.1  # filters 2-3 at kernel row 1
    mask = prune([2, 1, 1, 1], w, 0.25)
    expected = torch.ones(4, 1, 2, 1)
    expected[2:4, 0, 1, 0] = 0
    assert torch.equal(mask, expected)


@pytest.mark.parametrize("block_shape", [[1, 8, 1, 1], [2, 4, 1, 1], [4, 1, 1, 1], [1, 1, 1, 1]])
def test_masks_equal_distillers_formula(block_shape):
    torch.manual_seed(3)
    w = torch.randn(8, 16, 3, 3)
    assert torch.equal(prune(block_shape, w, 0.4), distiller_block_mask(w, 0.4, block_shape))


def test_agp_blocks_meet_the_agp_target_in_whole_blocks():
    torch.manual_seed(0)
    w = torch.randn(16, 16, 3, 3)
    agp = L1RankedStructureParameterPruner_AGP("b", 0.05, 0.7, "Blocks", ["w"], kwargs={"block_shape": [1, 8, 1, 1]})
    for epoch in (0, 5, 9):
        masks = {"w": ParameterMasker("w")}
        agp.set_param_mask(w, "w", masks, {"current_epoch": epoch, "starting_epoch": 0, "ending_epoch": 10,
                                           "frequency": 1})
        target = agp_target_sparsity(0.05, 0.7, epoch, 0, 10, 1)
        blocks = masks["w"].mask.reshape(32, 8, 9)
        assert torch.all(blocks.amax(dim=1) == blocks.amin(dim=1))  # each block wholly kept or pruned
        assert int((blocks[:, 0] == 0).sum()) == int(target * 288)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"block_shape": [1, 8, 1]}, "block_shape must be 4 positive integers"),
        ({"block_shape": [1, 0, 1, 1]}, "block_shape must be 4 positive integers"),
        ({"block_shape": [1, -8, 1, 1]}, "block_shape must be 4 positive integers"),
        ({"block_shape": [1, 8, 3, 1]}, r"must be \[block_repetitions, block_depth, 1, 1\]"),
        ({"block_shap": [1, 8, 1, 1]}, "did you mean 'block_shape'"),
        (None, "needs kwargs with block_shape"),
    ],
)
def test_bad_block_shapes_are_schedule_errors(kwargs, message):
    with pytest.raises(ScheduleError, match=message):
        L1RankedStructureParameterPruner("b", "Blocks", 0.5, ["w"], kwargs=kwargs)


def test_kwargs_with_another_group_type_are_refused():
    with pytest.raises(ScheduleError, match="only used by group_type 'Blocks'"):
        L1RankedStructureParameterPruner("b", "Filters", 0.5, ["w"], kwargs={"block_shape": [1, 8, 1, 1]})


SCHEDULE = """
pruners:
  block_pruner:
    class: L1RankedStructureParameterPruner_AGP
    initial_sparsity: 0.05
    final_sparsity: 0.7
    group_type: Blocks
    kwargs:
      block_shape: {shape}
    weights: [1.weight]
policies:
  - pruner: {{instance_name: block_pruner}}
    starting_epoch: 0
    ending_epoch: 10
    frequency: 1
"""


def model():
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Conv2d(6, 4, 3))


@pytest.mark.parametrize(
    "shape, message",
    [
        ("[1, 8]", r"s\.yaml:9: pruners\.block_pruner\.kwargs\.block_shape: .*4 positive integers"),
        ("[1, 0, 1, 1]", r"s\.yaml:9: pruners\.block_pruner\.kwargs\.block_shape: .*4 positive integers"),
        ("[1, 5, 1, 1]", r"pruners\.block_pruner: does not fit the model: .*filters \* channels \(24\) divisible by 5"),
    ],
)
def test_a_schedule_with_a_bad_block_shape_is_one_located_error(shape, message):
    with pytest.raises(ScheduleError, match=message) as err:
        schedule_from_text(model(), None, SCHEDULE.format(shape=shape), file="s.yaml")
    assert "\n" not in str(err.value)
