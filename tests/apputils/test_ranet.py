"""RANet: sub-networks at increasing resolution, fused features, and its classifiers as built-in exits."""
import pytest
import torch

from distill_ee.apputils.models import create_model
from distill_ee.apputils.models.ranet import RANet, RANetConfig
from distill_ee.checkpoint import load_checkpoint, save_checkpoint
from distill_ee.early_exit import EarlyExits
from distill_ee.summaries import total_macs
from support import conv_macs

#: 4x4 and 8x8 sub-networks of two blocks with one dense layer (growth 2), 4-channel stems and classifiers
TINY = RANetConfig(factors=(2, 1), blocks=2, layers=1, growth=2, channels=4, classifier_channels=4)


def dense(pixels: int, width: int) -> int:
    """One dense layer of growth 2 on ``width`` channels: 1x1 to 8 (4 x growth), 3x3 to 2."""
    return conv_macs(pixels, 8, width, 1) + conv_macs(pixels, 2, 8)


# the 4x4 sub-network (the image average-pooled by 2): stem 1 -> 4, block 1 (dense, 1x1 transition 6 -> 4)
LOW_STEM = conv_macs(16, 4, 1)
LOW_1 = dense(16, 4) + conv_macs(16, 4, 6, 1)
# block 2 halves the resolution (3x3/2, 4 -> 4), then dense at 2x2, transition 6 -> 8
LOW_2 = conv_macs(4, 4, 4) + dense(4, 4) + conv_macs(4, 8, 6, 1)
# the 8x8 sub-network: stem 1 -> 4; block 1 fuses the low block 1 (1x1 4 -> 4 at 4x4, upsampled), dense on 8
# channels, transition 10 -> 4; block 2 halves (4 -> 4), fuses the low block 2 (1x1 8 -> 4 at 2x2), transition 10 -> 8
HIGH_STEM = conv_macs(64, 4, 1)
HIGH_1 = conv_macs(16, 4, 4, 1) + dense(64, 8) + conv_macs(64, 4, 10, 1)
HIGH_2 = conv_macs(16, 4, 4) + conv_macs(4, 4, 8, 1) + dense(16, 8) + conv_macs(16, 8, 10, 1)


def classifier(pixels_after_stride: int, width: int) -> int:
    """3x3/2 conv to 4 channels, global pooling, linear 4 -> 10."""
    return conv_macs(pixels_after_stride, 4, width) + 4 * 10


C1, C2, C3, FINAL = classifier(4, 4), classifier(1, 8), classifier(16, 4), classifier(4, 8)


def tiny() -> RANet:
    torch.manual_seed(0)
    return RANet(TINY, num_classes=10, in_channels=1)


def test_low_resolution_runs_first_and_the_high_one_fuses_its_features():
    model = tiny().eval()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        low = model.subnets[0](x)
        high = model.subnets[1](x, low)
    assert [tuple(t.shape) for t in low] == [(2, 4, 4, 4), (2, 8, 2, 2)]
    assert [tuple(t.shape) for t in high] == [(2, 4, 8, 8), (2, 8, 4, 4)]
    assert model.subnets[0].blocks[0].fuse is None and model.subnets[1].blocks[0].fuse is not None


def test_macs_of_every_classifier_match_a_hand_count():
    model = tiny()
    assert (LOW_STEM, LOW_1, LOW_2, HIGH_STEM, HIGH_1, HIGH_2) == (576, 3_200, 1_472, 2_304, 16_128, 7_040)
    backbone = LOW_STEM + LOW_1 + LOW_2 + HIGH_STEM + HIGH_1 + HIGH_2 + FINAL
    assert total_macs(model, torch.randn(1, 1, 8, 8))[0] == backbone
    exits = EarlyExits.from_config({"attach": "builtin", "criterion": "max_prob",
                                    "exits": {n: {"threshold": 0.9} for n in ("classifier1", "classifier2",
                                                                              "classifier3")}},
                                   model, num_classes=10, input_shape=(1, 8, 8))
    first = LOW_STEM + LOW_1 + C1
    second = first + LOW_2 + C2
    third = second + HIGH_STEM + HIGH_1 + C3  # the high-resolution stem runs only after the low classifiers
    assert exits.exit_macs() == [first, second, third, backbone + C1 + C2 + C3]


def test_the_classifiers_follow_every_block_of_every_subnetwork():
    exits = create_model("ranet_mnist", 10, 1).builtin_exits()
    assert [e["attach"] for e in exits.values()] == ["subnets.0.blocks.0.out", "subnets.0.blocks.1.out",
                                                      "subnets.1.blocks.0.out"]


def test_input_factors_go_from_low_to_high_resolution():
    with pytest.raises(ValueError, match="lowest resolution to the highest"):
        RANet(RANetConfig(factors=(1, 2)), 10, 1)


def test_real_early_exit_equals_the_simulated_one_and_skips_the_high_resolution():
    torch.manual_seed(0)
    model = create_model("ranet_mnist", 10, 1)
    exits = EarlyExits.from_config({"attach": "builtin"}, model, num_classes=10, input_shape=(1, 28, 28))
    x = torch.randn(100, 1, 28, 28)
    multi = exits.multi_exit_model().eval()
    with torch.no_grad():
        logits = multi.simulate(x)
    entropies = [-(z.softmax(1) * z.log_softmax(1)).sum(1) for z in logits[:-1]]
    exits.set_thresholds([float(e.quantile(0.3)) for e in entropies])
    multi = exits.multi_exit_model().eval()
    rows = []
    model.subnets[1].stem[0].register_forward_pre_hook(lambda m, args: rows.append(args[0].shape[0]))
    with torch.no_grad():
        want, want_index = multi.decide(multi.simulate(x))
        rows.clear()
        got, got_index = multi(x)
    assert torch.equal(got_index, want_index)
    assert torch.allclose(got, want, atol=1e-5)
    # the full-resolution stem sees only the samples that no low-resolution classifier let go
    assert rows == [int((got_index >= 2).sum())] and 0 < rows[0] < 100


def test_a_checkpoint_rebuilds_the_builtin_exits_without_the_schedule(tmp_path):
    model = tiny()
    EarlyExits.from_config({"attach": "builtin", "exits": {"classifier2": {"threshold": 0.3}}}, model,
                           num_classes=10, input_shape=(1, 8, 8))
    save_checkpoint(tmp_path / "ranet.pth.tar", model)
    fresh = RANet(TINY, num_classes=10, in_channels=1)
    load_checkpoint(fresh, tmp_path / "ranet.pth.tar")
    rebuilt = EarlyExits.of(fresh)
    assert rebuilt.exit_names == ["classifier1", "classifier2", "classifier3"]
    assert rebuilt.thresholds == [None, 0.3, None]
    assert torch.equal(fresh.state_dict()["early_exits.classifier2.0.weight"],
                       model.state_dict()["early_exits.classifier2.0.weight"])
