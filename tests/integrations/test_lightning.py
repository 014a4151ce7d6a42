"""The Lightning callback: a schedule with exits, AGP filter pruning and thinning driven from Trainer.fit; Lightning's
own checkpoints resume bit-exactly and load into a fresh module with the thinned structure; two DDP processes end
identical; docs/lightning.md runs as written."""
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("lightning.pytorch")

import distill_ee  # noqa: E402
from distill_ee.apputils.models import create_model  # noqa: E402
from distill_ee.errors import ConfigError, MissingExtraError  # noqa: E402
from distill_ee.integrations.lightning import (CHECKPOINT_KEY, CompressionCallback,  # noqa: E402
                                              CompressionCheckpointMixin)
from distill_ee.modules import unwrap  # noqa: E402
from ddp_support import run_ranks  # noqa: E402
from test_distributed import ddp_schedule  # noqa: E402
from test_user_loop import SCHEDULE  # noqa: E402

DOC = Path(__file__).resolve().parents[2] / "docs" / "lightning.md"
EXAMPLE_INPUT = torch.zeros(1, 1, 28, 28)


class PlainClassifier(pl.LightningModule):
    """A LeNet classifier as a user writes one: the network in ``self.model``, val_loss and val_top1 logged."""

    def __init__(self, lr: float = 0.05):
        super().__init__()
        self.save_hyperparameters()
        self.model = create_model("lenet_mnist", 10, 1)

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        out = self(x)
        self.log("val_loss", nn.functional.cross_entropy(out, y), sync_dist=True)
        self.log("val_top1", 100.0 * (out.argmax(1) == y).float().mean(), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


class Classifier(CompressionCheckpointMixin, PlainClassifier):
    """The same with the mixin, so that ``load_from_checkpoint`` restores the compressed structure."""


class Recorder(pl.Callback):
    """Keeps the first epoch trained, the exits' weights as the first step sees them, and the strategy's model at
    the end of training."""

    first_epoch = None

    def on_train_epoch_start(self, trainer, pl_module):
        if self.first_epoch is None:
            self.first_epoch = trainer.current_epoch

    def on_train_start(self, trainer, pl_module):
        self.exits_before = {n: p.detach().clone() for n, p in pl_module.model.early_exits.named_parameters()}

    def on_train_end(self, trainer, pl_module):
        self.wrapper = trainer.strategy.model


def loaders(n=96, batch=16):
    gen = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(n, 1, 28, 28, generator=gen), torch.randint(0, 10, (n,), generator=gen))
    return DataLoader(data, batch_size=batch), DataLoader(data, batch_size=32)


def trainer(root, epochs=4, callbacks=(), **kwargs):
    kwargs.setdefault("logger", pl.loggers.CSVLogger(str(root / "logs"), name="", version=""))
    return pl.Trainer(max_epochs=epochs, accelerator="cpu", deterministic=True, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=str(root), callbacks=list(callbacks), **kwargs)


def fit(root, epochs=4, ckpt_path=None, seed=1, module_class=Classifier):
    """Train a seeded module under the schedule, saving a checkpoint after every epoch in root/ckpt."""
    (root / "schedule.yaml").write_text(SCHEDULE)
    pl.seed_everything(seed)
    module = module_class()
    compression = CompressionCallback(str(root / "schedule.yaml"), example_input=EXAMPLE_INPUT)
    saver = pl.callbacks.ModelCheckpoint(dirpath=str(root / "ckpt"), save_top_k=-1, filename="{epoch}")
    recorder = Recorder()
    trainer(root, epochs, [compression, saver, recorder]).fit(module, *loaders(), ckpt_path=ckpt_path)
    return module, compression, recorder


def assert_same_run(a, b):
    """Weights, masks and thresholds of two runs are identical (torch.equal)."""
    (ma, ca), (mb, cb) = a, b
    sa, sb = ma.model.state_dict(), mb.model.state_dict()
    assert list(sa) == list(sb)
    for name in sa:
        if isinstance(sa[name], torch.Tensor):
            assert torch.equal(sa[name], sb[name]), name
        else:
            assert sa[name] == sb[name], name
    for name, masker in ca.scheduler.masks.items():
        other = cb.scheduler.masks[name].mask
        assert (masker.mask is None) == (other is None), name
        assert masker.mask is None or torch.equal(masker.mask, other), name
    ta = distill_ee.EarlyExits.of(ma.model).thresholds
    assert ta == distill_ee.EarlyExits.of(mb.model).thresholds
    assert ca.optimizer.param_groups[0]["lr"] == cb.optimizer.param_groups[0]["lr"]


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory):
    """Four uninterrupted epochs: exits all along, AGP on conv2 in epochs 0-2, thinning in epoch 2."""
    root = tmp_path_factory.mktemp("whole")
    return root, fit(root)


@pytest.mark.slow
def test_the_callback_trains_exits_prunes_and_thins(whole_run):
    root, (module, compression, recorder) = whole_run
    model = module.model
    assert model.conv2.out_channels == 25 and model.early_exits.exit2[0].in_channels == 25
    assert [s["kind"] for s in distill_ee.structure_steps(model)] == ["early_exits", "thinning"]
    params = dict(model.named_parameters())
    for name, masker in compression.scheduler.masks.items():
        if masker.mask is not None:
            assert torch.equal(params[name] * masker.mask, params[name]), f"{name}: pruned weights came back"
    trained = dict(model.early_exits.named_parameters())
    assert any(not torch.equal(trained[n], before) for n, before in recorder.exits_before.items()
               if trained[n].shape == before.shape), "the exits did not train"
    assert compression.optimizer.param_groups[0]["lr"] == pytest.approx(0.05 * 0.5 ** 2)
    assert model.early_exits.exit1[0].training, "the exits' branches train in train mode"


@pytest.mark.slow
def test_the_schedules_figures_reach_the_trainers_logger(whole_run):
    root, _ = whole_run
    header = (root / "logs" / "metrics.csv").read_text().splitlines()[0].split(",")
    for column in ("sparsity", "lr", "train_exit1_loss", "train_exit2_top1", "val_loss", "valid_exit1_share",
                   "valid_exit2_share", "valid_macs_expected"):
        assert column in header


@pytest.mark.slow
@pytest.mark.parametrize("stopped_after", [1, 2], ids=["before-thinning", "after-thinning"])
def test_fit_resumed_from_a_lightning_checkpoint_ends_where_an_uninterrupted_run_does(whole_run, tmp_path,
                                                                                    stopped_after):
    root, (module, compression, _) = whole_run
    ckpt = root / "ckpt" / f"epoch={stopped_after}.ckpt"
    resumed, resumed_compression, recorder = fit(tmp_path, ckpt_path=str(ckpt), seed=2)  # other initial weights
    assert recorder.first_epoch == stopped_after + 1
    assert_same_run((module, compression), (resumed, resumed_compression))


@pytest.mark.slow
def test_a_module_without_the_mixin_resumes_too(whole_run, tmp_path):
    root, (module, compression, _) = whole_run
    ckpt = root / "ckpt" / "epoch=2.ckpt"
    resumed, resumed_compression, _ = fit(tmp_path, ckpt_path=str(ckpt), seed=2, module_class=PlainClassifier)
    assert_same_run((module, compression), (resumed, resumed_compression))


@pytest.mark.slow
def test_load_from_checkpoint_gives_the_thinned_model_with_its_exits(whole_run):
    root, (module, _, _) = whole_run
    path = root / "ckpt" / "epoch=3.ckpt"
    saved = torch.load(path, weights_only=True)[CHECKPOINT_KEY]  # plain values and tensors only
    assert [s["kind"] for s in saved["structure"]] == ["early_exits", "thinning"]
    restored = Classifier.load_from_checkpoint(str(path)).eval()
    assert restored.model.conv2.out_channels == 25
    exits = distill_ee.EarlyExits.of(restored.model)
    assert exits.exit_names == ["exit1", "exit2"]
    assert exits.thresholds == distill_ee.EarlyExits.of(module.model).thresholds
    x = loaders()[0].dataset.tensors[0][:8]
    assert torch.equal(restored(x), module.eval()(x))
    want = distill_ee.EarlyExits.of(module.model).multi_exit_model().eval()(x)
    got = exits.multi_exit_model().eval()(x)
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_a_wrong_model_attribute_is_one_line_before_training(tmp_path):
    (tmp_path / "schedule.yaml").write_text(SCHEDULE)
    callback = CompressionCallback(str(tmp_path / "schedule.yaml"), example_input=EXAMPLE_INPUT, model_attr="net")
    with pytest.raises(ConfigError, match=r"Classifier\.net is not a torch module"):
        trainer(tmp_path, 1, [callback], logger=False).fit(Classifier(), *loaders(32))


def test_without_lightning_the_import_is_one_line_naming_the_extra(monkeypatch):
    for name in [n for n in sys.modules if n == "lightning" or n.startswith("lightning.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "lightning", None)
    monkeypatch.delitem(sys.modules, "distill_ee.integrations.lightning")
    with pytest.raises(MissingExtraError, match=r"needs lightning, .*pip install distill-ee\[lightning\]"):
        importlib.import_module("distill_ee.integrations.lightning")


def test_the_integrations_package_does_not_import_lightning():
    code = "import sys, distill_ee.integrations; assert 'lightning' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# --------------------------------------------------------------------------- DDP
def ddp_fit(workdir):
    """One of two processes: Trainer(strategy='ddp') on gloo; exits idle after epoch 1, random filter masks,
    thinning in epoch 2."""
    rank = int(os.environ["RANK"])
    root = Path(workdir) / f"rank{rank}"
    root.mkdir(parents=True)
    (root / "schedule.yaml").write_text(ddp_schedule())
    pl.seed_everything(1 + rank)  # different seeds: the exits and random masks must still agree
    module = Classifier()
    compression = CompressionCallback(str(root / "schedule.yaml"), example_input=EXAMPLE_INPUT)
    recorder = Recorder()
    run = pl.Trainer(max_epochs=4, accelerator="cpu", devices=2, strategy="ddp", logger=False,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     callbacks=[compression, recorder], use_distributed_sampler=True)
    run.fit(module, *loaders(64))
    model = unwrap(module.model)
    return {"wrapper": type(recorder.wrapper).__name__, "rebuilds": getattr(recorder.wrapper, "rebuilds", 0),
            "state": {k: v.clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)},
            "masks": {n: None if m.mask is None else m.mask.clone() for n, m in compression.scheduler.masks.items()},
            "conv2": model.conv2.out_channels}


@pytest.mark.slow
def test_two_ddp_processes_end_with_identical_weights_and_masks(tmp_path):
    first, second = run_ranks(ddp_fit, str(tmp_path))
    assert first["wrapper"] == "Replicated" and first["rebuilds"] >= 3  # built, exits idle, thinned
    assert first["conv2"] == second["conv2"] == 25
    assert list(first["state"]) == list(second["state"])
    for name, value in first["state"].items():
        assert torch.equal(value, second["state"][name]), name
    assert first["masks"].keys() == second["masks"].keys()
    for name, mask in first["masks"].items():
        other = second["masks"][name]
        assert (mask is None) == (other is None) and (mask is None or torch.equal(mask, other)), name


# --------------------------------------------------------------------------- docs/lightning.md
def doc_blocks(language):
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S)


@pytest.mark.slow
def test_the_docs_example_runs_as_written(tmp_path, monkeypatch):
    (schedule,) = doc_blocks("yaml")
    example, reload, resume = doc_blocks("python")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "schedule.yaml").write_text(schedule)
    ns = {}
    exec(example, ns)
    assert ns["module"].model.conv2.out_channels == 25
    exec(reload, ns)
    exec(resume, ns)
    assert_same_run((ns["module"], ns["compression"]), (ns["resumed"], ns["trainer"].callbacks[0]))
