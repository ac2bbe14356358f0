"""What a training run shows while it runs: step-based progress for terminals and log files.

Lightning's stock display is written for epoch-based training on a terminal. For our step-based
runs (``max_steps`` set, ``max_epochs`` unset) it reads ``Epoch 0/-2``; after resuming at step N
it counts batches of the epoch against the steps still to go (``30/19``); with stdout redirected
(a log file, CI, SLURM) it prints nothing until the run ends; and its model summary reports
``Total FLOPs: 0``. The CLI (``RedLLMCLI``) therefore adds :class:`ProgressDefaults`, which swaps
the stock progress bar and model summary, when the Trainer adds them, for:

* :class:`StepProgressBar` on a terminal: tqdm bar counting optimizer steps of the whole run
  (``5/6`` after a resume at step 4 of 6);
* :class:`ProgressLog` otherwise: a plain line every ``log_every_n_steps`` optimizer steps or
  every 30 s, whichever comes first (step/total, elapsed, ETA, tokens/s, the progress-bar metrics);
* :class:`PlainModelSummary`: the summary without the FLOPs Lightning did not measure.

``--trainer.enable_progress_bar false`` turns all progress output off, as before. A bar put in
``trainer.callbacks`` yourself is left alone, e.g. plain lines on a terminal every 5 steps::

    --trainer.callbacks+=lightning_redllm.cli.progress.ProgressLog --trainer.callbacks.init_args.every_n_steps 5
"""
from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass
from typing import Any, Optional

import lightning as L
from lightning.pytorch.callbacks import ModelSummary, ProgressBar, RichModelSummary, RichProgressBar, TQDMProgressBar
from lightning.pytorch.utilities import rank_zero_info

#: Lightning logs its adverts ("💡 Tip: ... litlogger / litmodels") on this logger
LIGHTNING_RANK_ZERO_LOGGER = "lightning.pytorch.utilities.rank_zero"
TIP_PREFIX = "💡 Tip:"


# ------------------------------------------------------------------------------------------------
# arithmetic (pure, unit-tested)


def per_second(count: float, seconds: float) -> Optional[float]:
    """``count / seconds``; ``None`` when no time has passed (nothing to divide by yet)."""
    return count / seconds if seconds > 0 else None


def eta_seconds(steps_done: int, seconds: float, steps_left: Optional[int]) -> Optional[float]:
    """Time to run ``steps_left`` more steps at the pace of ``steps_done`` in ``seconds``; ``None``
    when unknown (no step done yet, no time passed, or no known total)."""
    if steps_left is None:
        return None
    if steps_left <= 0:
        return 0.0
    rate = per_second(steps_done, seconds)
    return steps_left / rate if rate else None


def format_duration(seconds: Optional[float]) -> str:
    """``H:MM:SS`` (``Nd H:MM:SS`` past a day); ``?`` for unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(round(max(seconds, 0.0)))
    days, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return f"{days}d {h}:{m:02d}:{s:02d}" if days else f"{h}:{m:02d}:{s:02d}"


def total_steps(trainer: L.Trainer) -> Optional[int]:
    """Optimizer steps of the whole run (``max_steps``, or what ``max_epochs`` implies); ``None`` when
    unbounded (an endless stream with no ``max_steps``)."""
    total = trainer.estimated_stepping_batches
    if total is None or not math.isfinite(total) or total <= 0:
        return None
    return int(total)


def _format_metric(value: Any) -> str:
    if hasattr(value, "item"):
        value = value.item()
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# ------------------------------------------------------------------------------------------------
# plain lines (stdout not a terminal)


def _check_intervals(every_n_steps: Optional[int], every_seconds: float) -> None:
    if every_n_steps is not None and every_n_steps < 1:
        raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
    if not every_seconds > 0:
        raise ValueError(f"every_seconds must be > 0, got {every_seconds}")


@dataclass
class _Mark:
    step: int
    tokens: int
    time: float


class ProgressLog(ProgressBar):
    """Progress as plain lines, for stdout that is a file or pipe (log files, CI, SLURM).

    A line is printed (and flushed) at each optimizer step that is a multiple of ``every_n_steps``,
    when ``every_seconds`` passed since the last line, and at the last step::

        [train] step 40/300 (13%) elapsed 0:00:31 ETA 0:03:22 tok/s 2,480 train/loss=5.912 val/loss=6.02

    ETA uses the pace since this run started (validation pauses included); tokens/s counts the
    module's ``tokens_seen`` (all ranks) over the time since the previous line. Validation results
    get a ``[val]`` line. Only global rank 0 prints.

    Args:
        every_n_steps: optimizer steps between lines; default: the trainer's ``log_every_n_steps``.
        every_seconds: at most this long between lines (checked after each batch).
    """

    def __init__(self, every_n_steps: Optional[int] = None, every_seconds: float = 30.0) -> None:
        super().__init__()
        _check_intervals(every_n_steps, every_seconds)
        self.every_n_steps = every_n_steps
        self.every_seconds = every_seconds
        self._enabled = True
        self._total: Optional[int] = None
        self._every_n = 1
        self._start = self._last = _Mark(0, 0, 0.0)

    # ProgressBar's switches (non-zero ranks and the tuner call disable())
    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def print(self, *args: Any, **kwargs: Any) -> None:
        if self._enabled:
            print(*args, **kwargs, flush=True)

    def _emit(self, line: str) -> None:
        if self._enabled:
            print(line, flush=True)

    def _mark(self, trainer: L.Trainer, pl_module: L.LightningModule) -> _Mark:
        return _Mark(trainer.global_step, int(getattr(pl_module, "tokens_seen", 0)), time.monotonic())

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after a resume global_step and tokens_seen are already restored here: rates count this run only
        self._start = self._last = self._mark(trainer, pl_module)
        self._total = total_steps(trainer)
        # log_every_n_steps=0 (no metric logging) must not mean a line every step: Lightning's default then
        self._every_n = self.every_n_steps or int(trainer.log_every_n_steps) or 50
        total = "?" if self._total is None else self._total
        what = "resuming at" if self._start.step else "starting at"
        self._emit(f"[train] {what} step {self._start.step}/{total}, a line every {self._every_n} steps "
                   f"or {self.every_seconds:g} s")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if step == self._last.step:  # no optimizer step since the last line (gradient accumulation)
            return
        now = time.monotonic()
        if step % self._every_n == 0 or now - self._last.time >= self.every_seconds or step == self._total:
            mark = self._mark(trainer, pl_module)
            self._emit(self.format_line(mark, self.get_metrics(trainer, pl_module)))
            self._last = mark

    def format_line(self, now: _Mark, metrics: dict[str, Any]) -> str:
        """The ``[train]`` line at ``now`` (rates relative to the run start and the previous line)."""
        total = self._total
        where = f"step {now.step}/{total} ({100 * now.step // total}%)" if total else f"step {now.step}"
        elapsed = now.time - self._start.time
        left = None if total is None else total - now.step
        eta = eta_seconds(now.step - self._start.step, elapsed, left)
        tok_s = per_second(now.tokens - self._last.tokens, now.time - self._last.time)
        parts = [f"[train] {where}", f"elapsed {format_duration(elapsed)}", f"ETA {format_duration(eta)}",
                 f"tok/s {'?' if tok_s is None else f'{tok_s:,.0f}'}"]
        parts += [f"{k}={_format_metric(v)}" for k, v in metrics.items() if k != "v_num"]
        return " ".join(parts)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = {k: v for k, v in self.get_metrics(trainer, pl_module).items() if k.startswith("val")}
        text = " ".join(f"{k}={_format_metric(v)}" for k, v in metrics.items()) or "(no metrics on the progress bar)"
        self._emit(f"[val] step {trainer.global_step} {text}")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        end = self._mark(trainer, pl_module)
        tok_s = per_second(end.tokens - self._start.tokens, end.time - self._start.time)
        total = "?" if self._total is None else self._total
        self._emit(f"[train] stopped at step {end.step}/{total} after {format_duration(end.time - self._start.time)}"
                   + ("" if tok_s is None else f", {tok_s:,.0f} tok/s on average"))


# ------------------------------------------------------------------------------------------------
# terminal bar


class StepProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar whose training bar counts optimizer steps of the whole run against the
    total (``max_steps``, or what ``max_epochs`` implies) and starts at the resumed step, so it reads
    ``5/6`` after resuming at step 4 of 6 (the stock bars count batches of the epoch against the steps
    left, ``30/19``, and Rich's reads ``Epoch 0/-2``). Without a known total it behaves like the
    stock bar.

    Args:
        refresh_rate: update the bar every this many optimizer steps.
        process_position: see ``TQDMProgressBar``.
    """

    def __init__(self, refresh_rate: int = 1, process_position: int = 0) -> None:
        super().__init__(refresh_rate=refresh_rate, process_position=process_position, leave=False)
        self._steps: Optional[int] = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._steps = total_steps(trainer)

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if self._steps is None:
            return super().on_train_epoch_start(trainer, *args)
        bar = self.train_progress_bar
        if bar.total != self._steps:  # first epoch of this run; later epochs continue the same bar
            bar.reset(total=self._steps)
            bar.initial = bar.n = trainer.global_step  # tqdm's rate counts from `initial`
            bar.refresh()
        bar.set_description("Training" if trainer.max_epochs == -1 else f"Epoch {trainer.current_epoch}")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._steps is None:
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        bar, step = self.train_progress_bar, trainer.global_step
        if bar.disable or step == bar.n or not self._should_update(step, self._steps):
            return
        bar.n = step
        bar.set_postfix(self.get_metrics(trainer, pl_module))  # refreshes the bar


# ------------------------------------------------------------------------------------------------
# model summary


class PlainModelSummary(ModelSummary):
    """Lightning's text model summary, minus the FLOPs column and ``Total FLOPs`` line when Lightning
    measured none.

    Why not print a number: Lightning counts FLOPs only by running ``example_input_array`` through
    the model under ``torch.utils.flop_counter.FlopCounterMode`` (forward only, no grad); without it
    it prints 0 for every layer and in total. Our modules define no example input on purpose: a
    batch's shape and, for RedLLM, its encoder/decoder split come from the data, and a dummy forward
    at fit start would cost a full forward of a 1B+ model (meta/sharded under FSDP) only to measure
    forward FLOPs of an arbitrary shape. The analytic training FLOPs of each real batch
    (``batch_flops``, i.e. ``training_flops_per_sequence`` x batch) are already computed every step
    and drive MFU (``train/device/mfu`` from ``TokenThroughputMonitor`` on GPUs). A module that does
    set ``example_input_array`` keeps Lightning's measured FLOPs.
    """

    @staticmethod
    def summarize(summary_data: list[tuple[str, list[str]]], total_parameters: int, trainable_parameters: int,
                  model_size: float, total_training_modes: dict[str, int], total_flops: int,
                  **summarize_kwargs: Any) -> None:
        if total_flops:  # measured from example_input_array: a real forward never has 0 FLOPs
            return ModelSummary.summarize(summary_data, total_parameters, trainable_parameters, model_size,
                                          total_training_modes, total_flops, **summarize_kwargs)
        from lightning.pytorch.utilities.model_summary.model_summary import get_human_readable_count

        cols = [(name, [str(v) for v in values]) for name, values in summary_data if name != "FLOPs"]
        widths = [max([len(name), *(len(v) for v in values)]) for name, values in cols]
        rows = [" | ".join(name.ljust(w) for (name, _), w in zip(cols, widths)).rstrip()]
        rule = "-" * (sum(widths) + 3 * (len(widths) - 1))
        rows.append(rule)
        for i in range(len(cols[0][1]) if cols else 0):
            rows.append(" | ".join(values[i].ljust(w) for (_, values), w in zip(cols, widths)).rstrip())
        rows += [
            rule,
            f"{get_human_readable_count(trainable_parameters):<10} Trainable params",
            f"{get_human_readable_count(total_parameters - trainable_parameters):<10} Non-trainable params",
            f"{get_human_readable_count(total_parameters):<10} Total params",
            f"{model_size:<10,.3f} Total estimated model params size (MB)",
            f"{total_training_modes['train']:<10} Modules in train mode",
            f"{total_training_modes['eval']:<10} Modules in eval mode",
        ]
        rank_zero_info("\n" + "\n".join(rows))


# ------------------------------------------------------------------------------------------------
# wiring


class ProgressDefaults(L.Callback):
    """Swaps the stock progress bar and model summary the Trainer adds (``enable_progress_bar`` /
    ``enable_model_summary``, both on by default) for :class:`StepProgressBar` (stdout is a
    terminal) or :class:`ProgressLog` (it is not) and :class:`PlainModelSummary`, before ``fit``
    starts. Only Lightning's own classes are swapped (a bar or summary you configured, a subclass
    included, is kept); with the flags off there is nothing to swap, so nothing is printed.

    Args:
        every_n_steps: :class:`ProgressLog` interval; default: the trainer's ``log_every_n_steps``.
        every_seconds: :class:`ProgressLog` time interval.
        plain: plain lines (``True``) or the bar (``False``); default: plain unless stdout is a terminal.
    """

    STOCK_BARS = (TQDMProgressBar, RichProgressBar)
    STOCK_SUMMARIES = (ModelSummary, RichModelSummary)

    def __init__(self, every_n_steps: Optional[int] = None, every_seconds: float = 30.0,
                 plain: Optional[bool] = None) -> None:
        _check_intervals(every_n_steps, every_seconds)  # now, not at fit start
        self.every_n_steps, self.every_seconds, self.plain = every_n_steps, every_seconds, plain

    def progress_bar(self) -> ProgressBar:
        plain = self.plain if self.plain is not None else not sys.stdout.isatty()
        return ProgressLog(self.every_n_steps, self.every_seconds) if plain else StepProgressBar()

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        # runs before any of them saw a hook (the Trainer appends its defaults after the given callbacks)
        for i, cb in enumerate(trainer.callbacks):
            if type(cb) in self.STOCK_BARS:
                trainer.callbacks[i] = self.progress_bar()
            elif type(cb) in self.STOCK_SUMMARIES:
                trainer.callbacks[i] = PlainModelSummary()  # the Trainer's default is depth 1 too


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(TIP_PREFIX)


def silence_lightning_tips() -> None:
    """Drop Lightning's "💡 Tip: ... try installing litlogger / litmodels" adverts.

    Lightning 2.6 logs them on every Trainer construction (``LoggerConnector.configure_logger``:
    whenever no ``LitLogger`` is used; ``_maybe_show_litmodels_tip``: default checkpointing) with no
    switch to turn them off (open upstream: Lightning-AI/pytorch-lightning#21294), so this filters those
    records on the logger that carries them; every other message of that logger still shows.
    Idempotent.
    """
    log = logging.getLogger(LIGHTNING_RANK_ZERO_LOGGER)
    if not any(isinstance(f, _DropTips) for f in log.filters):
        log.addFilter(_DropTips())


__all__ = ["ProgressDefaults", "ProgressLog", "StepProgressBar", "PlainModelSummary", "silence_lightning_tips",
           "per_second", "eta_seconds", "format_duration", "total_steps"]
