"""Which blocks routing may skip: residual blocks with an identity shortcut, named or matched by pattern."""
import pytest
import torch

from distill_ee.arguments import ArgumentError
from distill_ee.errors import ScheduleError
from distill_ee.routing.blocks import block_costs, resolve_blocks
from distill_ee.summaries import total_macs
from routing_support import INPUT, TinyRes, build, routing_schedule

X = torch.zeros(2, *INPUT)


def test_a_pattern_matches_the_outermost_blocks_and_leaves_out_downsampling_ones():
    blocks, left_out = resolve_blocks(TinyRes(), ["layer*.*"], X)
    assert blocks == ["layer1.0", "layer1.1", "layer2.1"]
    assert left_out == ["layer2.0"]


def test_naming_a_downsampling_block_is_an_error_at_its_position():
    with pytest.raises(ArgumentError) as err:
        resolve_blocks(TinyRes(), ["layer1.0", "layer2.0"], X)
    assert err.value.path == (1,)
    assert "downsampling" in err.value.message


def test_a_module_without_a_residual_addition_is_not_a_block():
    with pytest.raises(ArgumentError, match="not a residual block"):
        resolve_blocks(TinyRes(), ["relu"], X)


def test_an_unknown_block_gets_a_did_you_mean():
    with pytest.raises(ArgumentError) as err:
        resolve_blocks(TinyRes(), ["layer1.3"], X)
    assert "layer1.0" in err.value.suggestions or "layer1.1" in err.value.suggestions


def test_blocks_come_in_execution_order_whatever_the_order_named():
    blocks, _ = resolve_blocks(TinyRes(), ["layer2.1", "layer1.0"], X)
    assert blocks == ["layer1.0", "layer2.1"]


def test_block_costs_are_measured_shares_of_the_backbone():
    model = TinyRes()
    per_block, total = block_costs(model, ["layer1.0", "layer2.1"], X)
    assert total == total_macs(model, X[:1])[0]
    # a block of two 3x3 convolutions, 8 -> 8 channels on 12x12: 2 * 8*8*9 * 144
    assert per_block[0] == 2 * 8 * 8 * 9 * 144
    assert per_block[1] == 2 * 16 * 16 * 9 * 36


def test_in_a_schedule_a_downsampling_block_is_a_located_error():
    with pytest.raises(ScheduleError) as err:
        build(routing_schedule(blocks="[layer1.0, layer2.0]"))
    text = str(err.value)
    assert text.startswith("routing.yaml:6:") and "routing.r.blocks[1]" in text and "downsampling" in text
