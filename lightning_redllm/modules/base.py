"""The LightningModule both families share.

A subclass supplies two things:

* :meth:`objective` — turns a data batch (packed ``tokens`` for pretraining, or padded
  ``inputs``/``targets`` for instruction tuning) into model inputs with ``labels``. This is the one
  method to override for a new objective (span corruption, another prefix split, ...).
* :meth:`forward_batch` — calls the model on those inputs.

Everything else — building the model in ``configure_model`` (so DeepSpeed ZeRO-3 / FSDP can shard
at init), ``init_from`` weights, optimizers and schedules, metrics, throughput/MFU, the non-finite
loss policy, ``torch.compile`` — lives here once.

Host-device syncs. A training step reads no device value on the host except one flag per
optimizer step: the objective runs on the CPU batch before it is moved to the device
(:meth:`on_before_batch_transfer`), where the model inputs are checked for free (token ids in the
vocabulary, labels, encoder lengths) -- they travel with the batch under ``CHECKED_INPUTS`` and the
model skips its own (syncing) value checks on them; on an accelerator the loss finiteness is not read
in ``training_step`` but folded into the gradient-finiteness flag that
:meth:`on_before_optimizer_step` reads once (see ``defer_nonfinite_check``).
"""
from __future__ import annotations

import logging
from typing import Any, Literal, Optional

import lightning as L
from lightning.pytorch.utilities import rank_zero_info
import torch
from torchmetrics import MeanMetric

from ..config import ModelConfig
from ..errors import NonFiniteLossError
from ..models import LanguageModel, ModelOutput, build_model
from ..tokenizer import Tokenizer, load_tokenizer
from .checkpoint import check_compatible, init_from_message, read_checkpoint, stream_weights
from .optim import OPTIMIZERS, build_optimizer, lr_multiplier, param_groups, scale_grad

log = logging.getLogger(__name__)


#: methods each family must provide (checked when a module is constructed)
ABSTRACT_HOOKS = ("objective", "forward_batch", "batch_flops")

#: batch key of the model inputs that :meth:`LanguageModelModule.objective` made on the CPU batch and
#: :meth:`LanguageModelModule.check_inputs` checked there (the data keys stay, for callbacks)
CHECKED_INPUTS = "_checked_model_inputs"


class LanguageModelModule(L.LightningModule):
    """Base LightningModule of RedLLM / DecLLM training.

    Args:
        preset: model preset (``redllm-tiny``, ``decllm-1b``, ...; see ``ModelConfig.from_name``).
        overrides: ``ModelConfig`` fields to change on top of the preset (e.g. ``{dropout: 0.05}``).
        tokenizer: tokenizer file or bundled name; gives bos/eos/pad ids and must fit the vocab.
        init_from: start from these weights (Lightning ``.ckpt``, DeepSpeed checkpoint dir, or
            ``.safetensors``), without optimizer state; the checkpoint must be the same family/size.
        z_loss: weight of the z-loss (study: 1e-4 in pretraining, 0 in instruction tuning).
        optimizer: ``adamw``, ``adafactor`` (unfactored, the study's) or ``torch_adafactor``.
        lr: peak learning rate.
        weight_decay: decoupled weight decay (matrices only).
        betas: AdamW betas.
        schedule: ``cosine`` | ``constant`` | ``inverse_sqrt`` (all with linear warmup).
        warmup_steps: warmup optimizer steps.
        decay_steps: length of the cosine decay; default: the trainer's ``max_steps``.
        min_lr_ratio: LR floor as a fraction of ``lr`` (study: 0.1).
        nan_policy: on a non-finite loss or gradient: ``skip`` the step (no optimizer update, so
            weights and optimizer state stay as they were; the batch and its LR-schedule slot are
            consumed; counted and logged as ``train/skipped_steps``) or ``stop`` at once.
        max_bad_steps: with ``skip``, stop after this many consecutive bad steps. Stopping saves
            ``nonfinite-step<N>.ckpt`` in the run folder and raises ``NonFiniteLossError``.
        activation_checkpointing: recompute each block's activations in backward (less memory,
            ~1/3 more compute).
        compile: ``torch.compile`` each transformer block and the fused output-projection +
            cross-entropy (``LanguageModel.compile_blocks``; parameter names unchanged, so
            checkpoints are interchangeable with eager runs). The first steps pay the compilation.
            Combines with activation checkpointing and FSDP2; not with DeepSpeed ZeRO-3.
        loss_normalization: how the per-token losses of one optimizer step are averaged.
            ``step_tokens`` (default, T5X's): sum of every token loss of the step / all counted
            tokens of the step, across gradient accumulation and data-parallel ranks, so every
            token weighs the same however ragged the batches are. ``micro_batch``: the mean of each
            micro-batch's mean (Lightning's default behaviour). Identical for packed pretraining
            batches, where every micro-batch holds the same number of tokens.

    Under Lightning's ``ModelParallelStrategy`` the model is built on the meta device and sharded
    with FSDP2 (``lightning_redllm.scale.parallel``) before any weight is allocated: the mesh's
    ``tensor_parallel`` dimension is used as the FSDP shard group and ``data_parallel`` as the
    replicate group (HSDP; Lightning's default mesh shards within a node, replicates across nodes).
    """

    family: str = ""

    #: Where the non-finite *loss* check runs. ``False``: read in ``training_step`` (a non-finite
    #: micro-batch skips its backward). ``True``: kept on the device and read together with the
    #: gradient check, once per optimizer step (a non-finite micro-batch then skips the whole
    #: optimizer step, since its gradients are non-finite too). ``None`` (default): ``True`` on an
    #: accelerator, where each read is a sync, except under DeepSpeed (its gradients are not in
    #: ``p.grad`` for the combined check); ``False`` on the CPU, where reading costs nothing.
    defer_nonfinite_check: Optional[bool] = None

    def __init__(self, preset: str = "redllm-tiny", overrides: Optional[dict[str, Any]] = None,
                 tokenizer: str = "bundled-bpe-4k", init_from: Optional[str] = None, z_loss: float = 1e-4,
                 optimizer: Literal["adamw", "adafactor", "torch_adafactor"] = "adamw", lr: float = 3e-4,
                 weight_decay: float = 0.1, betas: tuple[float, float] = (0.9, 0.95),
                 schedule: Literal["cosine", "constant", "inverse_sqrt"] = "cosine", warmup_steps: int = 100,
                 decay_steps: Optional[int] = None, min_lr_ratio: float = 0.1,
                 nan_policy: Literal["skip", "stop"] = "skip", max_bad_steps: int = 10,
                 activation_checkpointing: bool = False,
                 loss_normalization: Literal["step_tokens", "micro_batch"] = "step_tokens",
                 compile: bool = False) -> None:
        super().__init__()
        missing = [h for h in ABSTRACT_HOOKS if getattr(type(self), h) is getattr(LanguageModelModule, h)]
        if missing:
            raise TypeError(f"{type(self).__name__} must implement {missing} (see DecLLMModule / RedLLMModule); "
                            "LanguageModelModule is only the shared base")
        self.save_hyperparameters()
        self.config = ModelConfig.from_name(preset, **(overrides or {}))
        if self.family and self.config.family != self.family:
            raise ValueError(
                f"{type(self).__name__} trains family {self.family!r} but preset {preset!r} is {self.config.family!r}"
            )
        self.tokenizer: Tokenizer = load_tokenizer(tokenizer)
        self.tokenizer.check_fits(self.config.vocab_size, what=f"model preset {preset!r}")
        if nan_policy not in ("skip", "stop"):
            raise ValueError(f"nan_policy must be 'skip' or 'stop', got {nan_policy!r}")
        if max_bad_steps < 1:
            raise ValueError(f"max_bad_steps must be >= 1, got {max_bad_steps}")
        lr_multiplier(schedule, warmup_steps=warmup_steps, total_steps=1, min_lr_ratio=min_lr_ratio)  # validates
        if loss_normalization not in ("step_tokens", "micro_batch"):
            raise ValueError(f"loss_normalization must be 'step_tokens' or 'micro_batch', got {loss_normalization!r}")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {OPTIMIZERS}")
        self.model: Optional[LanguageModel] = None
        self.train_acc = MeanMetric(nan_strategy="disable")  # its NaN check would read the device each step
        self.val_nll = MeanMetric()
        self.val_acc = MeanMetric()
        self.tokens_seen = 0
        self.skipped_steps = 0
        self._bad_streak = 0
        self._step_bad = False  # this batch hit a non-finite loss or gradient
        self.flops_per_batch: Optional[int] = None
        self._step_tokens: Optional[torch.Tensor] = None  # counted tokens of this optimizer step (this rank)
        self._loss_finite: Optional[torch.Tensor] = None  # deferred loss check of this optimizer step

    # ------------------------------------------------------------------ model
    def setup(self, stage: str) -> None:
        """Refuse data tokenized with another tokenizer, and bf16 on a CPU whose kernels cannot run
        bf16 attention, before any heavy work."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if self._trainer is not None and "bf16" in str(self.trainer.precision) \
                and self.trainer.strategy.root_device.type == "cpu":
            from .cpu_kernels import check_bf16_cpu_attention

            c = self.config
            check_bf16_cpu_attention(c.n_heads, c.n_kv_heads or c.n_heads, c.head_dim,
                                     int(getattr(dm, "seq_len", None) or 128))
        info = getattr(dm, "tokenizer_info", None) if dm is not None else None
        if not info:
            return
        tok = self.tokenizer
        fp = info.get("fingerprint")
        if fp and fp != tok.fingerprint:
            raise ValueError(
                f"the data shards were tokenized with {info.get('name') or info.get('path')} ({fp}) but the model "
                f"uses tokenizer {tok.path} ({tok.fingerprint}); set --model.init_args.tokenizer to match the data"
            )
        for key in ("bos_id", "eos_id", "pad_id"):
            if info.get(key) is not None and int(info[key]) != getattr(tok, key):
                raise ValueError(f"data {key}={info[key]} differs from tokenizer {tok.path} {key}={getattr(tok, key)}")
        if info.get("vocab_size") is not None and int(info["vocab_size"]) > self.config.vocab_size:
            raise ValueError(
                f"data vocab_size {info['vocab_size']} does not fit model vocab_size {self.config.vocab_size}"
            )

    def configure_model(self) -> None:
        if self.model is not None:
            return
        mesh = getattr(self, "_device_mesh", None)
        if mesh is not None:  # Lightning ModelParallelStrategy: FSDP2 over the data-parallel dim
            self.model = self._build_sharded(mesh)
            self._maybe_compile()
            return
        if self._zero3():
            if self.hparams.get("compile"):
                raise ValueError("compile=True is not supported under DeepSpeed ZeRO-3 (its per-module parameter "
                                 "gathering hooks run inside every block); use FSDP2 (recipes/strategy/fsdp.yaml) "
                                 "or leave compile off")
            self.model = self._build_zero3()
            return
        self.model = build_model(self.config)
        self.model.init_weights()
        if self.hparams.init_from:
            self.load_weights(self.hparams.init_from)
        if self.hparams.activation_checkpointing:
            from ..scale.parallel import apply_activation_checkpointing

            apply_activation_checkpointing(self.model)
        self._maybe_compile()

    def configure_callbacks(self) -> list:
        """Every fit gets the lost-rank watchdog (a no-op on one rank; see ``lightning_redllm.scale.watchdog``),
        unless the trainer already has one (e.g. with other settings, from a recipe)."""
        from ..scale.watchdog import LostRankWatchdog

        if self._trainer is not None and any(isinstance(c, LostRankWatchdog) for c in self.trainer.callbacks):
            return []
        return [LostRankWatchdog()]

    def _maybe_compile(self) -> None:
        """``compile=True``: compile each block (after activation checkpointing / FSDP2 wrapping,
        so the recompute and the parameter gathering stay around the compiled code)."""
        if self.hparams.get("compile") and not self.model.is_compiled:
            self.model.compile_blocks()

    def _build_sharded(self, mesh) -> LanguageModel:
        """Build on the meta device, shard, then allocate and initialize only this rank's shards."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        from ..scale.parallel import precision_param_dtype, shard_model

        with torch.device("meta"):
            model = build_model(self.config)
        # bf16-mixed: bf16 all-gathers and compute, fp32 shards and gradient reduction
        shard_model(model, _fsdp_mesh(mesh), param_dtype=precision_param_dtype(self.trainer.precision),
                    activation_checkpointing=self.hparams.activation_checkpointing)
        model.to_empty(device=self.trainer.strategy.root_device)
        model.init_weights()  # on the DTensor shards
        if self.hparams.init_from:
            ckpt = read_checkpoint(self.hparams.init_from)
            with torch.device("meta"):
                check_compatible(self.config, ckpt.config, ckpt.state, build_model(self.config), self.hparams.init_from)
            set_model_state_dict(model, ckpt.state, options=StateDictOptions(full_state_dict=True))
            rank_zero_info(init_from_message(self.hparams.init_from, self.config, ckpt.step))
        return model

    def _zero3(self) -> bool:
        return self._trainer is not None and bool(getattr(self.trainer.strategy, "zero_stage_3", False))

    def _build_zero3(self) -> LanguageModel:
        """DeepSpeed ZeRO-3: Lightning calls ``configure_model`` inside ``deepspeed.zero.Init``, so
        every parameter is partitioned the moment its module is built — no rank ever holds the
        whole model. Initialization (and ``init_from``) writes one module's parameters at a time,
        gathered, with rank 0's values kept. The tied matrix is read by the model itself for the
        output projection, outside the embedding's forward, so it is registered as an external
        parameter of the model: ZeRO-3 then keeps it gathered for the whole forward (one matrix,
        three uses, one gradient)."""
        import deepspeed

        def gathered(params):
            return deepspeed.zero.GatheredParameters(params, modifier_rank=0)

        model = build_model(self.config)
        model.init_weights(gather=gathered)
        deepspeed.zero.register_external_parameter(model, model.embed.weight)
        if self.hparams.init_from:
            # one tensor at a time from a memory-mapped file: no rank holds a second full copy
            with stream_weights(self.hparams.init_from) as src:
                check_compatible(self.config, src.config, src.shapes, model, self.hparams.init_from)  # reads ds_shape
                # GatheredParameters(modifier_rank=0) broadcasts rank 0's values: only rank 0 reads tensors
                reader = torch.distributed.get_rank() == 0
                for name, module in model.named_modules():
                    own = dict(module.named_parameters(recurse=False))
                    if own:
                        with gathered(list(own.values())), torch.no_grad():
                            for pname, param in own.items():
                                if reader:
                                    param.copy_(src.get(f"{name}.{pname}" if name else pname))
            rank_zero_info(init_from_message(self.hparams.init_from, self.config, src.step))
        if self.hparams.activation_checkpointing:
            from ..scale.parallel import checkpoint_blocks_in_place

            checkpoint_blocks_in_place(model)  # no wrapper modules inside zero.Init
        return model

    def load_weights(self, path: str) -> None:
        """Copy model weights from ``path`` (no optimizer state); refuses another family/size."""
        ckpt = read_checkpoint(path)
        check_compatible(self.config, ckpt.config, ckpt.state, self.model, path)
        self.model.load_state_dict(ckpt.state)
        rank_zero_info(init_from_message(path, self.config, ckpt.step))

    # ------------------------------------------------------------------ to override
    def objective(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Data batch -> model inputs incl. ``labels`` (-100 = no loss). Abstract: every family implements it."""
        raise NotImplementedError(f"{type(self).__name__}.objective")

    def forward_batch(self, inputs: dict[str, torch.Tensor]) -> ModelOutput:
        """Run the model on the output of :meth:`objective`, returning loss terms. Abstract."""
        raise NotImplementedError(f"{type(self).__name__}.forward_batch")

    def check_inputs(self, inputs: dict[str, torch.Tensor]) -> bool:
        """Check the model inputs :meth:`objective` made (on the CPU batch, where reading values is
        free) the way the model's forward would; return True when checked. The base class checks
        nothing (returns False), so the model keeps its own checks."""
        return False

    def input_tokens(self, inputs: dict[str, torch.Tensor]) -> int:
        """Tokens the model processes for this batch (throughput accounting)."""
        return sum(int(v.numel()) for k, v in inputs.items() if k.endswith("input_ids"))

    def batch_flops(self, inputs: dict[str, torch.Tensor]) -> int:
        """Training FLOPs of this batch for MFU. Abstract."""
        raise NotImplementedError(f"{type(self).__name__}.batch_flops")

    # ------------------------------------------------------------------ steps
    def forward(self, **inputs: torch.Tensor) -> ModelOutput:
        return self.forward_batch(inputs)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Run :meth:`objective` on the CPU batch and check its output there (no device sync); the
        result rides along under ``CHECKED_INPUTS``. A batch that is not a dict of CPU tensors is
        left for the step to handle the ordinary way."""
        if (self.model is None or not isinstance(batch, dict) or CHECKED_INPUTS in batch
                or not all(isinstance(v, torch.Tensor) and v.device.type == "cpu" for v in batch.values())):
            return batch
        inputs = self.objective(batch)
        return {**batch, CHECKED_INPUTS: inputs} if self.check_inputs(inputs) else batch

    def model_inputs(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], bool]:
        """(model inputs, checked on the CPU already) for a batch as the step receives it."""
        if CHECKED_INPUTS in batch:
            return dict(batch[CHECKED_INPUTS]), True
        return self.objective(batch), False

    def _shared_step(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], ModelOutput]:
        inputs, checked = self.model_inputs(batch)
        with self.model.inputs_checked(checked):
            return inputs, self.forward_batch(inputs)

    def _defer_nonfinite(self) -> bool:
        if self.defer_nonfinite_check is not None:
            return self.defer_nonfinite_check
        return self.device.type != "cpu" and not type(self.trainer.strategy).__name__.endswith("DeepSpeedStrategy")

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> Optional[torch.Tensor]:
        self._step_bad = False
        inputs, out = self._shared_step(batch)
        self.flops_per_batch = self.batch_flops(inputs)
        n_tokens = self.input_tokens(inputs)
        self.tokens_seen += n_tokens * self.trainer.world_size
        if self._defer_nonfinite():  # read with the gradient check, once per optimizer step
            finite = torch.isfinite(out.loss.detach())
            self._loss_finite = finite if self._loss_finite is None else self._loss_finite & finite
            bad = False
        else:
            bad = not bool(torch.isfinite(out.loss))
            bad = self.trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            # returning None makes Lightning skip backward and optimizer.step for this batch
            self._on_bad_step(f"non-finite loss ({float(out.loss.detach())})")
            return None
        count = out.num_tokens.clamp(min=1)
        backward_loss = out.loss
        if self._step_token_normalization():
            # value: this micro-batch's mean; gradient: that of the sum of its token losses.
            # normalize_gradients then divides by the tokens of the whole step (all micro-batches, ranks)
            tokens = out.num_tokens.detach()
            self._step_tokens = tokens if self._step_tokens is None else self._step_tokens + tokens
            backward_loss = scale_grad(out.loss, out.num_tokens)
        self.log("train/loss", out.loss, prog_bar=True)
        self.log("train/nll", out.nll)
        self.log("train/ppl", torch.exp(out.nll.clamp(max=30)))
        self.train_acc(out.correct / count, weight=count)
        self.log("train/acc", self.train_acc, on_step=True, on_epoch=False)
        self.log("train/z", out.z)
        self.log("train/tokens_seen", float(self.tokens_seen))
        if self.trainer.optimizers:
            self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        return backward_loss

    def on_train_epoch_start(self) -> None:
        self._step_tokens = None
        self._loss_finite = None

    def _step_token_normalization(self) -> bool:
        """``step_tokens`` needs the accumulated gradients in ``p.grad``; DeepSpeed keeps them in its
        own partitioned buffers (and accumulates inside its engine), so under DeepSpeed the loss is
        the micro-batch mean (warned once)."""
        if self.hparams.loss_normalization != "step_tokens":
            return False
        if type(self.trainer.strategy).__name__.endswith("DeepSpeedStrategy"):
            if not getattr(self, "_warned_ds_norm", False):
                self._warned_ds_norm = True
                log.warning("loss_normalization='step_tokens' is not available under DeepSpeed (its gradients "
                            "live in partitioned buffers): using the micro-batch mean")
            return False
        return True

    def normalize_gradients(self) -> None:
        """``loss_normalization='step_tokens'``: turn the accumulated gradient of summed token
        losses into the gradient of the mean over every counted token of the step.

        Lightning divides each micro-batch loss by ``accumulate_grad_batches`` (A) and DDP/FSDP
        average gradients over the W ranks, so the gradient here is sum_tokens(grad) / (A * W);
        multiplying by A * W / N (N = counted tokens of the step summed over ranks: one
        all-reduce of a scalar, no host sync) gives sum_tokens(grad) / N.
        """
        tokens, self._step_tokens = self._step_tokens, None
        if self.hparams.loss_normalization != "step_tokens" or tokens is None:
            return
        total = self.trainer.strategy.reduce(tokens.float(), reduce_op="sum")
        scale = (self.trainer.accumulate_grad_batches * self.trainer.world_size) / total.clamp(min=1)
        for p in self.parameters():
            if p.grad is not None:
                p.grad.mul_(scale.to(device=p.grad.device, dtype=p.grad.dtype))

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.normalize_gradients()
        loss_finite, self._loss_finite = self._loss_finite, None
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if not grads and loss_finite is None:
            return
        # one flag, one read per optimizer step: every gradient finite (and, deferred, every loss)
        finite = torch.stack([torch.isfinite(g).all() for g in grads]).all() if grads else None
        if loss_finite is not None:
            finite = loss_finite if finite is None else finite & loss_finite.to(finite.device)
        bad = self.trainer.strategy.reduce_boolean_decision(not bool(finite), all=False)
        if bad:
            # a parameter without .grad is left untouched by AdamW/Adafactor: the step is skipped
            for p in self.parameters():
                p.grad = None
            what = "non-finite gradient"
            if loss_finite is not None and not bool(loss_finite):  # the rare bad step may read more
                what = "non-finite loss"
            self._on_bad_step(what)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # the streak ends only after a batch whose loss AND gradients were finite (a NaN-gradient
        # batch has a finite loss, so resetting in training_step would never let it reach the limit)
        if not self._step_bad:
            self._bad_streak = 0
        self.log("train/skipped_steps", float(self.skipped_steps))

    def on_fit_start(self) -> None:
        """Fail before the first step when a checkpoint folder cannot be written (rank 0 probes)."""
        from ..reliability import CheckpointWriteError, check_writable

        dirs = {str(cb.dirpath) for cb in self.trainer.checkpoint_callbacks if getattr(cb, "dirpath", None)}
        error: Optional[CheckpointWriteError] = None
        if self.trainer.is_global_zero:
            for d in sorted(dirs):
                try:
                    check_writable(d)
                except CheckpointWriteError as err:
                    error = err
                    break
        if self.trainer.strategy.reduce_boolean_decision(error is not None, all=False):
            raise error or RuntimeError("rank 0 cannot write a checkpoint folder; see its error")

    def _on_bad_step(self, what: str) -> None:
        self._step_bad = True
        self.skipped_steps += 1
        self._bad_streak += 1
        step = self.trainer.global_step
        limit = 1 if self.hparams.nan_policy == "stop" else self.hparams.max_bad_steps
        log.warning("step %d: %s; skipped (%d consecutive, %d total)", step, what, self._bad_streak, self.skipped_steps)
        if self._bad_streak >= limit:
            path = f"{self.trainer.default_root_dir}/nonfinite-step{step}.ckpt"
            self.trainer.save_checkpoint(path, weights_only=False)  # full state; unset, Lightning says so on stdout
            raise NonFiniteLossError(
                f"{what} at step {step} ({self._bad_streak} consecutive bad step(s), nan_policy="
                f"{self.hparams.nan_policy!r}); checkpoint for inspection saved to {path}"
            )

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        _, out = self._shared_step(batch)
        count = out.num_tokens.float()
        if count > 0:
            self.val_nll.update(out.nll, weight=count)
            self.val_acc.update(out.correct / count, weight=count)

    def on_validation_epoch_end(self) -> None:
        if self.val_nll.update_count == 0:
            return
        nll = self.val_nll.compute()
        self.log("val/loss", nll, prog_bar=True, sync_dist=False)
        self.log("val/ppl", torch.exp(nll.clamp(max=30)))
        self.log("val/acc", self.val_acc.compute())
        self.val_nll.reset()
        self.val_acc.reset()

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def on_test_epoch_end(self) -> None:
        if self.val_nll.update_count == 0:
            return
        nll = self.val_nll.compute()
        self.log("test/loss", nll)
        self.log("test/ppl", torch.exp(nll.clamp(max=30)))
        self.log("test/acc", self.val_acc.compute())
        self.val_nll.reset()
        self.val_acc.reset()

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        """Per-example mean NLL of the targets (scoring) and the number of scored tokens.
        ``python -m lightning_redllm predict`` writes them to ``<default_root_dir>/predictions.jsonl``."""
        inputs, checked = self.model_inputs(batch)
        with self.model.inputs_checked(checked):
            out = self.forward_batch({**inputs, "return_logits": True})
        labels = inputs["labels"]
        logp = torch.log_softmax(out.logits.float(), dim=-1)
        mask = labels != -100
        tok = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
        count = mask.sum(-1)
        return {"nll": -(tok.sum(-1) / count.clamp(min=1)), "tokens": count}

    # ------------------------------------------------------------------ optim
    def configure_optimizers(self):
        hp = self.hparams
        opt = build_optimizer(hp.optimizer, param_groups(self.model, hp.weight_decay), lr=hp.lr, betas=tuple(hp.betas))
        total = hp.decay_steps or (self.trainer.max_steps if self.trainer and self.trainer.max_steps > 0 else 0)
        if hp.schedule == "cosine" and total <= 0:
            raise ValueError("schedule 'cosine' needs model.decay_steps or trainer.max_steps > 0")
        fn = lr_multiplier(hp.schedule, warmup_steps=hp.warmup_steps, total_steps=total, min_lr_ratio=hp.min_lr_ratio)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, fn)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    # ------------------------------------------------------------------ checkpoint extras
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["model_config"] = self.config.to_dict()
        checkpoint["tokenizer_fingerprint"] = self.tokenizer.fingerprint
        checkpoint["module_counters"] = {"tokens_seen": self.tokens_seen, "skipped_steps": self.skipped_steps,
                                         "bad_streak": self._bad_streak}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # runs before Lightning copies the weights: refuse another family/size with the file named
        # instead of a bare load_state_dict size-mismatch report
        path = (self._trainer.ckpt_path if self._trainer is not None else None) or "the checkpoint"
        saved = checkpoint.get("model_config")
        if saved is not None:
            other = ModelConfig.from_dict(saved)
            if other.family != self.config.family:
                raise ValueError(
                    f"checkpoint {path} holds a {other.family} model but this run trains {self.config.family}"
                )
        if self.model is not None and "state_dict" in checkpoint:  # DeepSpeed keeps weights elsewhere
            state = {k[len("model."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
            check_compatible(self.config, saved, state, self.model, path)
        fp = checkpoint.get("tokenizer_fingerprint")
        if fp and fp != self.tokenizer.fingerprint:
            raise ValueError(f"checkpoint {path} was trained with another tokenizer ({fp}) than this run's "
                             f"{self.tokenizer.path} ({self.tokenizer.fingerprint})")
        fitting = self._trainer is not None and self._trainer.state.fn == "fit"
        if fitting and "optimizer_states" in checkpoint:
            self._resume_hparams(checkpoint, path)
        counters = checkpoint.get("module_counters", {})
        self.tokens_seen = int(counters.get("tokens_seen", 0))
        self.skipped_steps = int(counters.get("skipped_steps", 0))
        self._bad_streak = int(counters.get("bad_streak", 0))

    #: hyperparameters a resumed run may change: any other difference is refused
    RESUMABLE_CHANGES = ("lr", "weight_decay", "betas", "schedule", "warmup_steps", "decay_steps", "min_lr_ratio",
                         "z_loss", "nan_policy", "max_bad_steps", "activation_checkpointing", "loss_normalization",
                         "compile", "init_from", "overrides", "prefix_len", "pad_to_multiple")

    def _resume_hparams(self, checkpoint: dict[str, Any], path: str) -> None:
        """Resuming (``fit --ckpt_path``) continues the run in the checkpoint. Its model, optimizer
        and tokenizer must be this run's (refused otherwise, naming the file); hyperparameters the
        user changed on purpose (LR, schedule, z-loss, dropout, ...) apply from the resumed step on,
        and each change is announced — never silently dropped or silently applied. The restored
        optimizer/scheduler state is patched so a new LR / weight decay / betas really take effect."""
        saved = {k: v for k, v in (checkpoint.get("hyper_parameters") or {}).items() if not k.startswith("_")}
        mine = {k: v for k, v in self.hparams.items() if not k.startswith("_")}
        if saved.get("optimizer", mine.get("optimizer")) != mine.get("optimizer"):
            raise ValueError(f"checkpoint {path} was trained with optimizer {saved['optimizer']!r} but this run uses "
                             f"{mine['optimizer']!r}; its optimizer state cannot be resumed (start a new stage with "
                             "--model.init_args.init_from instead)")
        norm = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731  (YAML gives lists, code tuples)
        changed = {k: (saved[k], mine[k]) for k in saved.keys() & mine.keys() if norm(saved[k]) != norm(mine[k])}
        other = sorted(k for k in changed if k not in self.RESUMABLE_CHANGES)
        if other:
            raise ValueError(f"resuming {path} with different {', '.join(other)} is not supported "
                             f"({'; '.join(f'{k}: {changed[k][0]!r} -> {changed[k][1]!r}' for k in other)}); "
                             "start a new stage with --model.init_args.init_from instead")
        if not changed:
            return
        text = ", ".join(f"{k} {changed[k][0]!r} -> {changed[k][1]!r}" for k in sorted(changed))
        if self.trainer.is_global_zero:
            log.warning("resuming %s with changed hyperparameters, yours apply from step %s: %s",
                        path, checkpoint.get("global_step", "?"), text)
        hp = self.hparams
        for opt_state in checkpoint.get("optimizer_states", []):
            for i, group in enumerate(opt_state.get("param_groups", [])):
                if "initial_lr" in group and group["initial_lr"]:
                    group["lr"] = group["lr"] / group["initial_lr"] * hp.lr
                    group["initial_lr"] = hp.lr
                if i == 0 and "weight_decay" in group:  # group 0 holds the matrices (param_groups())
                    group["weight_decay"] = hp.weight_decay
                if "betas" in group:
                    group["betas"] = tuple(hp.betas)
        for sched in checkpoint.get("lr_schedulers", []):
            if "base_lrs" in sched:
                sched["base_lrs"] = [hp.lr] * len(sched["base_lrs"])


def _fsdp_mesh(mesh):
    """The FSDP mesh from Lightning's (data_parallel, tensor_parallel) mesh: shard over whichever
    dimension has several devices; with both, 2-D HSDP (replicate over data_parallel, shard over
    tensor_parallel). No tensor parallelism is applied."""
    names = mesh.mesh_dim_names or ()
    if names != ("data_parallel", "tensor_parallel"):
        return mesh
    dp, tp = mesh["data_parallel"].size(), mesh["tensor_parallel"].size()
    if tp == 1:
        return mesh["data_parallel"]
    if dp == 1:
        return mesh["tensor_parallel"]
    return mesh


__all__ = ["LanguageModelModule", "CHECKED_INPUTS", "NonFiniteLossError"]
