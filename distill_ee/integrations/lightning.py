"""PyTorch Lightning: a callback that drives a compression schedule from ``Trainer.fit``.

``CompressionCallback("schedule.yaml", example_input=x)`` loads the schedule on the LightningModule's model
(the attribute ``model`` unless told) and calls the scheduler at the hooks of the plain loop (README: "Your
training loop, with a schedule"). Lightning's own checkpoints carry the structure steps, masks and every
policy's state, so ``Trainer.fit(ckpt_path=...)`` resumes exactly; ``LightningModule.load_from_checkpoint``
gives the thinned model with its exits when the module mixes in ``CompressionCheckpointMixin`` (or calls
``restore_compression`` from its own ``on_load_checkpoint``). Under the DDP strategy the model is wrapped by
``distill_ee.distributed.wrap``: masks are rank 0's, idle exits are left out of DDP, thinning rebuilds it.
docs/lightning.md shows a whole module.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional

import torch
from torch import nn

from ..extras import require

pl = require("lightning.pytorch", "distill_ee.integrations.lightning, the PyTorch Lightning callback,")

from .. import distributed  # noqa: E402  (after the one-line error for a missing lightning)
from ..checkpoint import load_checkpoint  # noqa: E402
from ..early_exit.exits import EarlyExits  # noqa: E402
from ..epoch_scalars import exit_scalars, policy_scalars, sparsity_scalar  # noqa: E402
from ..errors import ConfigError  # noqa: E402
from ..modules import unwrap  # noqa: E402
from ..schedule import load_schedule  # noqa: E402
from ..scheduler import CompressionScheduler  # noqa: E402
from ..structure import structure_steps  # noqa: E402

#: the key of a Lightning checkpoint that holds the compression state
CHECKPOINT_KEY = "distill_ee"


def batch_target(batch: Any) -> Optional[torch.Tensor]:
    """The labels of an ``(inputs, labels)`` batch (None for any other batch)."""
    if isinstance(batch, (list, tuple)) and len(batch) >= 2 and isinstance(batch[1], torch.Tensor):
        return batch[1]
    return None


def first_optimizer(configured: Any) -> torch.optim.Optimizer:
    """The optimizer among what ``configure_optimizers`` returned (the first, when there are several)."""
    found = configured
    while isinstance(found, (list, tuple)) and found:
        found = found[0]
    if isinstance(found, Mapping):
        found = found.get("optimizer")
    if not isinstance(found, torch.optim.Optimizer):
        raise ConfigError("CompressionCallback: configure_optimizers must return an optimizer (alone, in a list, "
                          f"or under 'optimizer' in a dict), got {type(configured).__name__}")
    return found


def compressed_model(pl_module: nn.Module, model_attr: str) -> nn.Module:
    """The module's ``model_attr`` attribute: the network the schedule compresses."""
    model = getattr(pl_module, model_attr, None)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"CompressionCallback: {type(pl_module).__name__}.{model_attr} is not a torch module "
                          "(pass model_attr= naming the attribute that holds the network)")
    return model


def _driver(pl_module: nn.Module) -> Optional["CompressionCallback"]:
    """The CompressionCallback training ``pl_module`` now, if any."""
    trainer = getattr(pl_module, "_trainer", None)
    for callback in (trainer.callbacks if trainer is not None else []):
        if isinstance(callback, CompressionCallback) and callback.scheduler is not None:
            return callback
    return None


def restore_compression(pl_module: nn.Module, checkpoint: Dict[str, Any]) -> None:
    """Give ``pl_module``'s model the checkpoint's structure (exits attached, thinning replayed) and weights;
    while a CompressionCallback trains it, also the masks and policy states. Call it from the module's
    ``on_load_checkpoint`` (``CompressionCheckpointMixin`` does), before Lightning loads the state dict."""
    saved = checkpoint.get(CHECKPOINT_KEY)
    driver = _driver(pl_module)
    if not isinstance(saved, Mapping) or (driver is not None and driver.restored is checkpoint):
        return
    attr = str(saved.get("model_attr", "model"))
    prefix = attr + "."
    weights = {k[len(prefix):]: v for k, v in checkpoint.get("state_dict", {}).items() if k.startswith(prefix)}
    state = {"structure": saved.get("structure", []), "state_dict": weights}
    if driver is not None:
        state["compression_sched"] = saved.get("compression_sched", {})
        driver.restored = checkpoint
    load_checkpoint(compressed_model(pl_module, attr), state, optimizer=driver.optimizer if driver else None,
                    scheduler=driver.scheduler if driver else None)


class CompressionCheckpointMixin:
    """Mix into a LightningModule (before ``LightningModule``) so that its checkpoints load with their
    compressed structure, in ``load_from_checkpoint`` as in ``Trainer.fit(ckpt_path=...)``."""

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        """Restore the compressed structure, then whatever the next class restores."""
        restore_compression(self, checkpoint)  # type: ignore[arg-type]
        super().on_load_checkpoint(checkpoint)  # type: ignore[misc]


class CompressionCallback(pl.Callback):
    """Loads a compression schedule on the module's model at setup and calls its scheduler at Lightning's hooks.

    ``val_loss`` and ``val_top1`` name the logged metrics that reach the schedule's LR policies as ``min`` and
    ``max``; ``target`` takes a batch's labels (for the exits' losses); ``log_scalars`` logs each epoch's
    figures (sparsity, LR, the policies' epoch metrics) through the Trainer's loggers; ``ddp_kwargs`` reach
    DistributedDataParallel under the DDP strategy, after the strategy's own. One gradient step per
    batch (``accumulate_grad_batches=1``) and checkpoints at epoch ends are assumed.
    """

    def __init__(self, schedule: str, *, example_input: Optional[torch.Tensor] = None, model_attr: str = "model",
                 val_loss: str = "val_loss", val_top1: str = "val_top1",
                 target: Callable[[Any], Optional[torch.Tensor]] = batch_target, log_scalars: bool = True,
                 exit_shares: bool = True, ddp_kwargs: Optional[Dict[str, Any]] = None):
        super().__init__()
        self.schedule = schedule
        self.example_input = example_input
        self.model_attr = model_attr
        self.metric_names = {"min": val_loss, "max": val_top1}
        self.target = target
        self.log_scalars = log_scalars
        self.exit_shares = exit_shares
        self.ddp_kwargs = dict(ddp_kwargs or {})
        self.scheduler: Optional[CompressionScheduler] = None
        self.optimizer: Optional[torch.optim.Optimizer] = None
        #: the checkpoint dict restored last (restore_compression runs once per checkpoint)
        self.restored: Optional[Dict[str, Any]] = None
        self._module: Optional[nn.Module] = None
        self._batch = 0
        self._ended_epoch = -1

    # ----------------------------------------------------------------- setup
    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        """Build the optimizer, then the schedule on the model with it (exits join the optimizer), as a plain
        loop does; Lightning then gets that optimizer from ``configure_optimizers``."""
        if stage != "fit" or self._module is pl_module:
            return
        if trainer.accumulate_grad_batches != 1:
            raise ConfigError("CompressionCallback: accumulate_grad_batches must be 1 (the scheduler's minibatch "
                              f"hooks follow optimizer steps), got {trainer.accumulate_grad_batches}")
        model = compressed_model(pl_module, self.model_attr)
        configured = pl_module.configure_optimizers()
        self.optimizer = first_optimizer(configured)
        self.scheduler = load_schedule(model, self.optimizer, self.schedule, example_input=self.example_input)
        self._module = pl_module
        # Instance attributes shadow the module's methods: Lightning looks hooks up with getattr.
        pl_module.configure_optimizers = lambda: configured  # type: ignore[method-assign]
        pl_module.training_step = self._with_joint_loss(pl_module.training_step)  # type: ignore[method-assign]
        pl_module.on_load_checkpoint = self._restoring_first(pl_module)  # type: ignore[method-assign]

    def _with_joint_loss(self, training_step: Callable[..., Any]) -> Callable[..., Any]:
        """``training_step`` returning the schedule's joint loss (the exits' and regularizers' terms added).

        Wrapping the step is the one place where the loss can be replaced: Lightning's ``on_before_backward``
        sees the loss but ignores what a callback returns, and the exits' outputs are those of this step's
        forward pass. Under DDP the wrapped step runs inside DDP's forward, as the loss of a plain loop does.
        """
        def step(batch: Any, *args: Any, **kwargs: Any) -> Any:
            out = training_step(batch, *args, **kwargs)
            loss = out["loss"] if isinstance(out, Mapping) else out
            if not isinstance(loss, torch.Tensor):
                return out
            joint = self.scheduler.before_backward_pass(self._epoch, self._batch, self._steps, loss,
                                                        target=self.target(batch))
            return {**out, "loss": joint} if isinstance(out, Mapping) else joint
        return step

    def _restoring_first(self, pl_module: "pl.LightningModule") -> Callable[[Dict[str, Any]], None]:
        """The module's ``on_load_checkpoint``, preceded by ``restore_compression``: ``Trainer.fit(ckpt_path=)``
        then loads the weights into the thinned model, whether or not the module mixes in the mixin."""
        own = pl_module.on_load_checkpoint

        def on_load_checkpoint(checkpoint: Dict[str, Any]) -> None:
            restore_compression(pl_module, checkpoint)
            own(checkpoint)
        return on_load_checkpoint

    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        """Under several processes, DDP as ``distributed.wrap`` builds it: idle exits left out, rebuilt by
        thinning."""
        if distributed.is_distributed() and isinstance(trainer.strategy, pl.strategies.DDPStrategy):
            kwargs = {**getattr(trainer.strategy, "_ddp_kwargs", {}), **self.ddp_kwargs}
            trainer.strategy.model = distributed.wrap(pl_module, self.scheduler, **kwargs)

    def on_fit_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        """Leave the strategy with the bare module (as Lightning's DDP teardown does with its own wrapper)."""
        if isinstance(trainer.strategy.model, distributed.Replicated):
            trainer.strategy.model = pl_module

    # ----------------------------------------------------------------- hooks
    @property
    def _epoch(self) -> int:
        return self._module.current_epoch if self._module is not None else 0

    @property
    def _steps(self) -> int:
        batches = self._module.trainer.num_training_batches
        return int(batches) if batches != float("inf") else 0

    def on_train_epoch_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        """The scheduler's ``on_epoch_begin``."""
        self.scheduler.on_epoch_begin(trainer.current_epoch, self.optimizer)

    def on_train_batch_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", batch: Any,
                             batch_idx: int) -> None:
        """The scheduler's ``on_minibatch_begin`` (masks applied before the forward pass)."""
        self._batch = batch_idx
        self.scheduler.on_minibatch_begin(trainer.current_epoch, batch_idx, self._steps, self.optimizer)

    def on_before_optimizer_step(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule",
                                 optimizer: torch.optim.Optimizer) -> None:
        """The scheduler's ``before_parameter_optimization`` (after backward)."""
        self.scheduler.before_parameter_optimization(trainer.current_epoch, self._batch, self._steps,
                                                     self.optimizer)

    def on_train_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        """The scheduler's ``on_minibatch_end`` (masks re-applied after the step)."""
        self.scheduler.on_minibatch_end(trainer.current_epoch, batch_idx, self._steps, self.optimizer)

    def on_validation_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        """End the epoch after its closing validation, before ModelCheckpoint (Lightning runs it last) saves."""
        loop = trainer.fit_loop.epoch_loop
        if trainer.state.fn == "fit" and not trainer.sanity_checking and loop.batch_progress.is_last_batch:
            self._end_epoch(trainer, pl_module)

    def on_train_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        """End the epoch (when no validation closed it)."""
        self._end_epoch(trainer, pl_module)

    def _end_epoch(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        """The scheduler's ``on_epoch_end`` with rank 0's validation metrics, once per epoch; then the logs."""
        epoch = trainer.current_epoch
        if self._ended_epoch == epoch:
            return
        self._ended_epoch = epoch
        metrics = {key: float(trainer.callback_metrics[name]) for key, name in self.metric_names.items()
                   if name in trainer.callback_metrics}
        self.scheduler.on_epoch_end(epoch, self.optimizer, metrics=distributed.broadcast_object(metrics))
        if self.log_scalars:
            self._log(trainer, pl_module)

    def epoch_scalars(self, pl_module: "pl.LightningModule") -> Dict[str, float]:
        """The epoch's figures under the sample app's metrics.csv names (reading them resets the policies')."""
        scalars = {f"train_{k}": v for k, v in policy_scalars(self.scheduler).items()}
        scalars["sparsity"] = sparsity_scalar(compressed_model(pl_module, self.model_attr), self.scheduler)
        scalars["lr"] = float(self.optimizer.param_groups[0]["lr"])
        return scalars

    def _log(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        scalars = self.epoch_scalars(pl_module)
        if trainer.is_global_zero:
            if self.exit_shares:  # one pass of real early exit over the first validation loader, on rank 0
                loaders = trainer.val_dataloaders
                loader = loaders[0] if isinstance(loaders, (list, tuple)) and loaders else loaders or None
                model = compressed_model(pl_module, self.model_attr)
                shares = exit_scalars(EarlyExits.of(model), loader, self.scheduler.masks)
                scalars.update({f"valid_{k}": v for k, v in shares.items()})
            for logger in trainer.loggers:
                logger.log_metrics({"epoch": trainer.current_epoch, **scalars}, step=trainer.global_step)

    # ----------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule",
                           checkpoint: Dict[str, Any]) -> None:
        """Add the model's structure steps and the scheduler's state (masks, policies) to Lightning's dict."""
        model = unwrap(compressed_model(pl_module, self.model_attr))
        checkpoint[CHECKPOINT_KEY] = {"model_attr": self.model_attr, "structure": structure_steps(model),
                                      "compression_sched": self.scheduler.state_dict()}

    def on_load_checkpoint(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule",
                           checkpoint: Dict[str, Any]) -> None:
        """Restore what the module's ``on_load_checkpoint`` did not (it restores all, before the weights)."""
        restore_compression(pl_module, checkpoint)


__all__ = ["CHECKPOINT_KEY", "CompressionCallback", "CompressionCheckpointMixin", "batch_target",
           "compressed_model", "first_optimizer", "restore_compression"]
