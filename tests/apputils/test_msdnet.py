"""MSDNet: multi-scale dense blocks, the paper's options, and its classifiers declared as built-in exits."""
import pytest
import torch

from distill_ee.apputils.models import create_model
from distill_ee.apputils.models.msdnet import CIFAR_ANYTIME, MSDNet, MSDNetConfig, Transition
from distill_ee.checkpoint import load_checkpoint, save_checkpoint
from distill_ee.early_exit import EarlyExits
from distill_ee.summaries import total_macs
from support import conv_macs

#: two scales (16x16 and 8x8), two blocks of one layer, no bottleneck or transition: small enough to count by hand
TINY = MSDNetConfig(blocks=2, base=1, step=1, channels=4, growth=2, gr_factor=(1, 2), bn_factor=(1, 2),
                    bottleneck=False, reduction=0.0, classifier_channels=8)


# block 1: the first layer (1 -> 4 channels at 16x16, then 4 -> 8 strided to 8x8) and one layer of growth 2:
# 4 -> 2 new channels at 16x16; at 8x8 (growth x 2 = 4 new) half strided from the finer scale (4 -> 2) and half
# from the same scale (8 -> 2)
BLOCK1 = (conv_macs(256, 4, 1) + conv_macs(64, 8, 4)
          + conv_macs(256, 2, 4) + conv_macs(64, 2, 4) + conv_macs(64, 2, 8))
# classifier on the coarsest scale, 12 channels at 8x8: 3x3/2 to 8 channels (4x4), 3x3/2 (2x2), pool, linear
CLASSIFIER1 = conv_macs(16, 8, 12) + conv_macs(4, 8, 8) + 8 * 10
# block 2: its layer drops the finest scale (prune max): 6 channels at 16x16 strided to 2, 12 at 8x8 to 2
BLOCK2 = conv_macs(64, 2, 6) + conv_macs(64, 2, 12)
# the last classifier reads 16 channels at 8x8
FINAL = conv_macs(16, 8, 16) + conv_macs(4, 8, 8) + 8 * 10


def tiny() -> MSDNet:
    torch.manual_seed(0)
    return MSDNet(TINY, num_classes=10, in_channels=1)


def test_features_keep_every_scale_and_grow_densely():
    model = tiny().eval()
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        first = model.blocks[0](x)
        second = model.blocks[1](first)
    # 4 + 2 new channels at the finest scale; 8 + 2 (strided from the finer scale) + 2 (from itself) at the coarse one
    assert [tuple(t.shape) for t in first] == [(2, 6, 16, 16), (2, 12, 8, 8)]
    assert [tuple(t.shape) for t in second] == [(2, 16, 8, 8)]  # the finest scale is dropped
    assert model.widths == [12, 16]


def test_macs_of_the_backbone_and_of_every_classifier_match_a_hand_count():
    model = tiny()
    assert BLOCK1 == 59_904 and CLASSIFIER1 == 16_208 and BLOCK2 == 20_736 and FINAL == 20_816
    assert total_macs(model, torch.randn(1, 1, 16, 16))[0] == BLOCK1 + BLOCK2 + FINAL
    exits = EarlyExits.from_config({"attach": "builtin", "exits": {"classifier1": {"threshold": 0.5}}}, model,
                                   num_classes=10, input_shape=(1, 16, 16))
    assert exits.exit_names == ["classifier1"]
    assert exits.exit_macs() == [BLOCK1 + CLASSIFIER1, BLOCK1 + CLASSIFIER1 + BLOCK2 + FINAL]


def test_the_papers_cifar_setting_has_its_scales_blocks_and_transitions():
    model = create_model("msdnet_cifar", 100, 3)
    assert model.config == CIFAR_ANYTIME
    assert CIFAR_ANYTIME.steps() == [4, 2, 2, 2, 2, 2, 2]  # 16 layers, 7 classifiers
    # prune max on 3 scales: the finest scale goes after layers 6 and 12, each drop followed by a transition
    assert sum(isinstance(m, Transition) for m in model.modules()) == 2
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        shapes = []
        for block in model.blocks:
            x = block(x)
            shapes.append([tuple(t.shape[1:]) for t in x])
    assert [len(s) for s in shapes] == [3, 3, 2, 2, 2, 1, 1]  # blocks end after layers 4, 6, 8, ..., 16
    assert shapes[0] == [(40, 32, 32), (80, 16, 16), (160, 8, 8)]  # 16 + 4 x 6 channels, times 1, 2, 4
    assert len(model.builtin_exits()) == 6


def test_lin_grow_blocks_grow_by_step_per_block():
    config = create_model("msdnet_cifar_batch", 10, 3).config
    assert config.steps() == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("arch", ["msdnet_mnist", pytest.param("msdnet_cifar", marks=pytest.mark.slow)])
def test_real_early_exit_equals_the_simulated_one(arch):
    torch.manual_seed(0)
    channels = 1 if arch.endswith("mnist") else 3
    size = 28 if arch.endswith("mnist") else 32
    model = create_model(arch, 10, channels)
    exits = EarlyExits.from_config({"attach": "builtin", "criterion": "entropy"}, model, num_classes=10,
                                   input_shape=(channels, size, size))
    x = torch.randn(120, channels, size, size)
    multi = exits.multi_exit_model().eval()
    with torch.no_grad():
        logits = multi.simulate(x)
    entropies = [-(z.softmax(1) * z.log_softmax(1)).sum(1) for z in logits[:-1]]
    exits.set_thresholds([float(e.quantile(0.25)) for e in entropies])  # about a quarter leaves at each exit
    multi = exits.multi_exit_model().eval()
    with torch.no_grad():
        want, want_index = multi.decide(multi.simulate(x))
        got, got_index = multi(x)
    assert torch.equal(got_index, want_index)
    assert torch.allclose(got, want, atol=1e-5)
    taken = torch.bincount(got_index, minlength=len(logits))
    assert (taken[:-1] > 0).sum() >= 3  # the batch really shrinks at several exits


def test_later_blocks_run_only_for_the_samples_still_in_the_batch():
    torch.manual_seed(0)
    model = create_model("msdnet_mnist", 10, 1)
    exits = EarlyExits.from_config({"attach": "builtin", "exits": {"classifier1": {"threshold": 0.5}}},
                                   model, num_classes=10, input_shape=(1, 28, 28))
    multi = exits.multi_exit_model().eval()
    x = torch.randn(64, 1, 28, 28)
    with torch.no_grad():
        first = multi.simulate(x)[0]
    entropy = -(first.softmax(1) * first.log_softmax(1)).sum(1)
    exits.set_thresholds({"classifier1": float(entropy.median())})  # the other classifiers stay off
    multi = exits.multi_exit_model().eval()
    rows = []
    later = model.blocks[1].layers[0].layers[0].conv_normal.net[0]  # a convolution of block 2
    later.register_forward_pre_hook(lambda m, args: rows.append(args[0].shape[0]))
    with torch.no_grad():
        _, index = multi(x)
    stayed = int((index > 0).sum())
    assert 0 < stayed < 64 and rows == [stayed]


def test_a_checkpoint_rebuilds_the_builtin_exits_without_the_schedule(tmp_path):
    model = tiny()
    exits = EarlyExits.from_config({"attach": "builtin", "exits": {"classifier1": {"threshold": 0.7,
                                                                                  "loss_weight": 0.4}}},
                                   model, num_classes=10, input_shape=(1, 16, 16))
    path = tmp_path / "msd.pth.tar"
    save_checkpoint(path, model)
    fresh = MSDNet(TINY, num_classes=10, in_channels=1)
    load_checkpoint(fresh, path)
    rebuilt = EarlyExits.of(fresh)
    assert rebuilt.exit_names == exits.exit_names and rebuilt.thresholds == [0.7]
    assert rebuilt.spec.exits[0].loss_weight.start == 0.4
    x = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        for a, b in zip(exits.multi_exit_model().eval().simulate(x), rebuilt.multi_exit_model().eval().simulate(x)):
            assert torch.equal(a, b)
