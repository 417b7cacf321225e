"""The training loop: epochs of Algorithm 1 batches, validation, checkpoints, resume.

A run folder holds::

    model.pt         the latest model checkpoint (afp_core.checkpoint format), every epoch
    train-state.pt   what resuming needs: weights, optimiser, scheduler, grad scaler,
                     position (epoch, step), every random state, the log so far
    log.csv          epoch, step, train_loss, val_loss, val_top1, val_top1_shift, lr, seconds
    config.yaml      the configuration of the run

Ctrl-C (SIGINT) or SIGTERM finishes the current step, saves both files and raises
``TrainingInterrupted``, a ``KeyboardInterrupt`` (the CLI exits 130); the data loader's
workers ignore both signals, which reach them too when sent to the process group, and
leave the stopping to the main process. A ``max_minutes`` budget stops the same way
but returns normally. ``resume=True`` continues from ``train-state.pt``: batches are a
function of (seed, epoch, step) only, so a resumed run sees exactly the batches the
uninterrupted run would have seen and, on the same machine, ends with the same weights.

On CUDA the step runs under ``torch.autocast`` (bfloat16 where supported, else float16
with a ``GradScaler``). Under ``torchrun`` (WORLD_SIZE > 1) each process trains on its
own share of the training songs with DistributedDataParallel; rank 0 validates, logs and
saves. Neither path can be exercised on a CPU-only machine; both are kept small.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import math
import os
import platform
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor, nn

import afp_core
from afp_core.augment import apply_spec_masks
from afp_core.checkpoint import load_checkpoint, load_torch_file, save_checkpoint
from afp_core.errors import AfpError, CheckpointError, ConfigError
from afp_core.faults import fault_point
from afp_core.fileutil import atomic_path, atomic_write_text
from afp_core.models import (
    Fingerprinter,
    build_model,
    count_parameters,
    embed_windows,
    initialise_model,
)
from afp_core.models.widen import find_widening_factor, widen_nafp
from afp_core.tasks import TaskState
from afp_core.training.config import TrainConfig, resolve_data_path
from afp_core.training.data import (
    BatchSpec,
    ContrastiveBatches,
    RetrievalSet,
    SongPool,
    TrainingData,
    excerpt_layout,
    make_augmenter,
    make_loader,
    make_retrieval_set,
    make_validation_batches,
    prepare_training_data,
)
from afp_core.training.loss import nt_xent
from afp_core.training.optim import Lamb, WarmupCosine

STATE_FORMAT = "afp-train-state"
STATE_VERSION = 1
MODEL_FILE = "model.pt"
STATE_FILE = "train-state.pt"
LOG_FILE = "log.csv"
LOG_COLUMNS = (
    "epoch",
    "step",
    "train_loss",
    "val_loss",
    "val_top1",
    "val_top1_shift",
    "lr",
    "seconds",
)
# Settings a resumed run may change: they do not alter what is computed.
RESUMABLE_CHANGES = {"output", "training.device", "training.workers", "training.max_minutes"}

Note = Callable[[str], None]


class TrainingInterrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C or SIGTERM after saving; its last note said where."""


@dataclasses.dataclass
class TrainResult:
    """How a run ended."""

    out: Path
    checkpoint: Path
    state: Path
    epochs: int  # completed epochs
    steps: int  # optimiser steps in all
    stopped: str  # "finished", "paused" (until_epoch), "budget" or "interrupted"
    history: list[dict[str, float]]


class ContrastiveStep(nn.Module):
    """Front-end -> masks -> encoder for anchors and positives in one forward pass.

    A module of its own so that DistributedDataParallel wraps the whole step (its
    gradient hooks only run through ``forward``).
    """

    def __init__(self, model: Fingerprinter) -> None:
        super().__init__()
        self.model = model

    def forward(self, anchors: Tensor, positives: Tensor, masks: Tensor | None) -> Tensor:
        """(N, W) + (N, W) waves -> (2N, D) unit vectors; ``masks`` hide parts of positives."""
        n = anchors.shape[0]
        features = self.model.features(torch.cat([anchors, positives]))
        if masks is not None:
            masked = apply_spec_masks(features[n:], masks)
            features = torch.cat([features[:n], masked])
        return self.model.embed(features)


@dataclasses.dataclass(frozen=True)
class Distributed:
    """Process rank and count (1 process without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Distributed:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        return cls(
            rank=int(os.environ["RANK"]),
            world=world,
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        )


class StopFlag:
    """Set by SIGINT/SIGTERM (main thread only) or ``TaskState.cancel``; read between steps.

    A second Ctrl-C raises ``KeyboardInterrupt`` at once.
    """

    def __init__(self, task: TaskState | None = None) -> None:
        self.task = task
        self.signalled = False
        self._previous: dict[int, Any] = {}

    @property
    def set(self) -> bool:
        return self.signalled or (self.task is not None and self.task.cancelled)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signalled and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signalled = True

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopFlag]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        try:
            yield self
        finally:
            for number, handler in self._previous.items():
                signal.signal(number, handler)


class Trainer:
    """Trains ``config.model`` as ``config`` says, into the run folder ``out``.

    ``data`` may be given (tests build it once); otherwise ``prepare_training_data``
    finds, splits and decodes it. ``on_step(trainer, global_step, loss)`` is called after
    every completed optimiser step (progress hooks, tests).
    """

    def __init__(
        self,
        config: TrainConfig,
        out: Path | str | None = None,
        device: str | None = None,
        quiet: bool = False,
        on_note: Note | None = None,
        data: TrainingData | None = None,
        task: TaskState | None = None,
        on_step: Callable[[Trainer, int, float], None] | None = None,
    ) -> None:
        self.config = config
        self.out = Path(out if out is not None else config.output)
        self.quiet = quiet
        self.on_note = on_note or (lambda text: print(f"afp: {text}", file=sys.stderr))
        self.task = task
        self.on_step = on_step
        self.dist = Distributed.from_env()
        self.device = _pick_device(device or config.training.device, self.dist)
        self._data = data
        self.history: list[dict[str, float]] = []

    # --- set-up ---------------------------------------------------------------------------

    def _setup(self, fresh: bool = True) -> None:
        cfg = self.config.training
        if self.dist.world > 1 and not torch.distributed.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(backend)
        # The model before the data, so that a fresh run's initialisation (pre-trained
        # weights, model.arch.pretrained) fails before any long preparation. A resumed run
        # takes its weights from the state instead: the initialisation files need not exist.
        self.model = build_model(self.config.model, seed=cfg.seed)
        if fresh and cfg.init_from:
            self._init_from_checkpoint(resolve_data_path(cfg.init_from))
        elif fresh:
            initialise_model(self.model, self._note)
        self.model.to(self.device)
        self.data = self._data or prepare_training_data(
            self.config, on_note=self._note, rank=self.dist.rank, world=self.dist.world
        )
        spec = self.config.model
        n_freq, n_time = self.model.frontend.output_shape(spec.audio.window)
        self.batch_spec = BatchSpec(
            n=cfg.batch_size,
            sample_rate=spec.audio.sample_rate,
            window=spec.audio.window,
            n_freq=n_freq,
            n_time=n_time,
            repeat_songs=cfg.repeat_songs,
        )
        excerpt, anchor_offset = excerpt_layout(
            self.config.augmentation, spec.audio.sample_rate, spec.audio.window
        )
        train_songs = self.data.songs.train[self.dist.rank :: self.dist.world]
        self.pool = SongPool(
            train_songs, excerpt, anchor_offset, spec.audio.window, self.config.data.energy_floor
        )
        self.steps_per_epoch = cfg.steps_per_epoch or max(
            1, math.ceil(self.pool.total_windows(spec.audio.hop) / cfg.batch_size)
        )
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.dataset = ContrastiveBatches(
            self.pool,
            self.config.augmentation,
            self.batch_spec,
            self.steps_per_epoch,
            cfg.seed,
            noise_files=self.data.noise.train,
            room_ir_files=self.data.room_irs.train,
            mic_ir_files=self.data.mic_irs.train,
            rank=self.dist.rank,
        )
        self.step_module: nn.Module = ContrastiveStep(self.model)
        if self.dist.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.step_module = nn.parallel.DistributedDataParallel(self.step_module, device_ids=ids)
        self.lr = cfg.effective_lr()
        # frozen parts (model.arch.freeze_encoder) have requires_grad False: not optimised
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = Lamb(trainable, lr=self.lr, weight_decay=cfg.weight_decay)
        self.scheduler = WarmupCosine(
            self.optimizer, self.total_steps, min_lr=cfg.min_lr, warmup_steps=cfg.warmup_steps
        )
        self.amp_dtype = _amp_dtype(self.device, cfg.amp)
        self.scaler = torch.amp.GradScaler(
            "cuda", enabled=self.amp_dtype == torch.float16 and self.device.type == "cuda"
        )
        self._setup_validation()
        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.elapsed_before = 0.0
        self._epoch_losses: list[float] = []
        self._in_step = False

    def _init_from_checkpoint(self, path: Path) -> None:
        """Start from a trained checkpoint's weights.

        Its model spec must be this run's, or a NAFP narrower by a whole factor and
        otherwise the same, which is widened into this run's model (``widen_nafp``).
        """
        checkpoint = load_checkpoint(path)
        if checkpoint.spec.to_dict() == self.config.model.to_dict():
            self.model.load_state_dict(checkpoint.model.state_dict())
            self._note(f"weights from {path} (sha256 {checkpoint.sha256[:12]})")
        elif find_widening_factor(checkpoint.model, self.model):
            factor = widen_nafp(checkpoint.model, self.model, seed=self.config.training.seed)
            self._note(
                f"weights from {path} (sha256 {checkpoint.sha256[:12]}), every channel "
                f"widened {factor}x: the same fingerprints at step 0"
            )
        else:
            raise ConfigError(
                f"training.init_from: {path} holds another model spec than this run's "
                f"model section ({checkpoint.spec.to_dict()})"
            )

    def _setup_validation(self) -> None:
        cfg = self.config.training
        songs = self.data.songs.validation
        self.val_batches: list[dict[str, Any]] = []
        self.retrieval: RetrievalSet | None = None
        if not self.dist.main or len(songs) < 2:
            if self.dist.main:
                self._note("fewer than 2 validation songs: no validation figures")
            return
        spec = dataclasses.replace(self.batch_spec, n=min(cfg.batch_size, len(songs)))
        augmenter = make_augmenter(
            self.config.augmentation,
            spec,
            self.data.noise.validation,
            self.data.room_irs.validation,
            self.data.mic_irs.validation,
        )
        pool = SongPool(
            songs,
            self.pool.excerpt,
            self.pool.anchor_offset,
            spec.window,
            self.config.data.energy_floor,
        )
        self.val_batches = make_validation_batches(pool, augmenter, spec, cfg.val_batches, cfg.seed)
        if cfg.val_windows:
            self.retrieval = make_retrieval_set(pool, augmenter, cfg.val_windows, cfg.seed)

    def _note(self, text: str) -> None:
        if self.dist.main:
            self.on_note(text)

    # --- the run ----------------------------------------------------------------------------

    def run(self, resume: bool = False, until_epoch: int | None = None) -> TrainResult:
        """Train to the configured number of epochs (or ``until_epoch``, for tests).

        Raises ``TrainingInterrupted`` after saving when interrupted.
        """
        state_path = self.out / STATE_FILE
        if not resume and state_path.exists():
            raise AfpError(
                f"{self.out}: already holds a training run ({STATE_FILE}); continue it with "
                "--resume or choose another output folder"
            )
        if resume and not state_path.exists():
            raise AfpError(f"{self.out}: no {STATE_FILE} to resume from")
        state = load_train_state(state_path) if resume else None
        if state is not None:
            _check_same_config(state["config"], self.config.to_dict())
        self._setup(fresh=state is None)
        if state is not None:
            self._restore(state)
            self._note(
                f"resuming at epoch {self.epoch + 1}, step {self.step_in_epoch} "
                f"({self.global_step} steps done)"
            )
        elif self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(
                self.out / "config.yaml",
                yaml.safe_dump(self.config.to_dict(), sort_keys=False),
            )
            self._describe_start()
        epochs = self.config.training.epochs
        last_epoch = min(until_epoch or epochs, epochs)
        self.started = time.monotonic()
        stop = StopFlag(self.task)
        stopped = "finished" if self.epoch >= epochs else "paused"
        with stop.installed():
            try:
                while self.epoch < last_epoch:
                    if stop.set:  # the request came during validation: no new epoch
                        stopped = "interrupted"
                        break
                    if not self._train_epoch(stop) and self.epoch < last_epoch:
                        stopped = "interrupted" if stop.set else "budget"
                        break
                else:
                    stopped = "finished" if self.epoch >= epochs else "paused"
            except KeyboardInterrupt:
                stopped = "interrupted"
                if self._in_step:
                    # A second Ctrl-C inside a step may have left the weights half-updated:
                    # keep the last saved state rather than save that.
                    self._note("interrupted inside a step; the last saved checkpoint is kept")
                    raise
            if stopped in ("interrupted", "budget") and self.dist.main:
                self._save(stopped)
                self._note(
                    f"{stopped}: saved {self.out / MODEL_FILE} at epoch {self.epoch + 1}, "
                    f"step {self.step_in_epoch}; continue with --resume"
                )
        if stopped == "interrupted":
            raise TrainingInterrupted
        return TrainResult(
            out=self.out,
            checkpoint=self.out / MODEL_FILE,
            state=self.out / STATE_FILE,
            epochs=self.epoch,
            steps=self.global_step,
            stopped=stopped,
            history=list(self.history),
        )

    def _describe_start(self) -> None:
        d = self.data.describe()
        cfg = self.config.training
        self._note(
            f"{d['songs']['train']} training songs ({d['song_hours']['train']:.2f} h), "
            f"{d['songs']['validation']} validation, {d['songs']['test']} test; "
            f"{d['noise_clips']['train']} noise clips, {d['room_irs']['train']} room and "
            f"{d['mic_irs']['train']} microphone IRs for training"
        )
        self._note(
            f"{self.config.model.name} with {count_parameters(self.model):,} parameters"
            f"{_trained_share(self.model)} on "
            f"{self.device}; {cfg.epochs} epochs x {self.steps_per_epoch} steps of 2N="
            f"{2 * cfg.batch_size}, lr {self.lr:.3g} -> {cfg.min_lr:g}"
        )

    def _budget_spent(self) -> bool:
        minutes = self.config.training.max_minutes
        return bool(minutes) and time.monotonic() - self.started >= 60 * minutes

    def _train_epoch(self, stop: StopFlag) -> bool:
        """One epoch from the current position; False when it stopped early."""
        from tqdm import tqdm

        loader = make_loader(
            self.dataset, self.config.training.workers, self.epoch, self.step_in_epoch
        )
        bar = tqdm(
            total=self.steps_per_epoch,
            initial=self.step_in_epoch,
            desc=f"epoch {self.epoch + 1}/{self.config.training.epochs}",
            unit="step",
            dynamic_ncols=True,
            disable=self.quiet or not self.dist.main,
            file=sys.stderr,
        )
        stopping = False
        with bar:
            for batch in loader:
                self._in_step = True
                loss = self._train_step(batch)
                self._epoch_losses.append(loss)
                self.step_in_epoch = int(batch["step"]) + 1
                self.global_step += 1
                self._in_step = False
                fault_point("train.step")
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
                if self.on_step is not None:
                    self.on_step(self, self.global_step, loss)
                if self._should_stop(stop):
                    stopping = True
                    break
        del loader
        if self.step_in_epoch < self.steps_per_epoch:
            return False
        losses, self._epoch_losses = self._epoch_losses, []  # the state saved next is clean
        self._end_epoch(losses)
        return not stopping and not self._budget_spent()

    def _should_stop(self, stop: StopFlag) -> bool:
        flag = stop.set or self._budget_spent()
        if self.dist.world > 1:
            # Every process must stop at the same step, or the next all-reduce hangs.
            value = torch.tensor([float(flag)], device=self.device)
            torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
            flag = bool(value.item())
        return flag

    def _train_step(self, batch: dict[str, Any]) -> float:
        device = self.device
        anchors = batch["anchors"].to(device, non_blocking=True)
        positives = batch["positives"].to(device, non_blocking=True)
        masks = batch["masks"]
        masks = masks.to(device) if bool(masks[:, [1, 3]].any()) else None
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(
            device_type=device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None
        ):
            z = self.step_module(anchors, positives, masks)
        n = anchors.shape[0]
        loss = nt_xent(
            z[:n].float(), z[n:].float(), self.config.training.temperature, batch["songs"]
        )
        if not torch.isfinite(loss):
            raise AfpError(
                f"the training loss became {loss.item()} at step {self.global_step + 1}; "
                "lower training.lr"
            )
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return float(loss.detach())

    def _end_epoch(self, losses: list[float]) -> None:
        self.epoch += 1
        self.step_in_epoch = 0
        if not self.dist.main:
            if self.dist.world > 1:
                torch.distributed.barrier()
            return
        row = {
            "epoch": self.epoch,
            "step": self.global_step,
            "train_loss": float(np.mean(losses)) if losses else float("nan"),
            **self.validate(),
            "lr": float(self.scheduler.get_last_lr()[0]),
            "seconds": round(self.elapsed(), 1),
        }
        self.history.append(row)
        self._save("epoch")
        self._note(
            f"epoch {self.epoch}: train loss {row['train_loss']:.4f}, val loss "
            f"{row['val_loss']:.4f}, val top-1 {row['val_top1']:.3f} "
            f"(shifted 0.2 s: {row['val_top1_shift']:.3f}), {row['seconds']:.0f} s"
        )
        if self.dist.world > 1:
            torch.distributed.barrier()

    def elapsed(self) -> float:
        """Training seconds, over all resumed parts of the run."""
        return self.elapsed_before + time.monotonic() - self.started

    # --- validation -------------------------------------------------------------------------

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Validation loss over the fixed batches, top-1 retrieval clean and shifted."""
        nan = float("nan")
        result = {"val_loss": nan, "val_top1": nan, "val_top1_shift": nan}
        self.model.eval()
        try:
            if self.val_batches:
                losses = []
                for batch in self.val_batches:
                    masks = batch["masks"]
                    masks = masks.to(self.device) if bool(masks[:, [1, 3]].any()) else None
                    z = ContrastiveStep(self.model)(
                        batch["anchors"].to(self.device), batch["positives"].to(self.device), masks
                    )
                    n = batch["anchors"].shape[0]
                    losses.append(float(nt_xent(z[:n], z[n:], self.config.training.temperature)))
                result["val_loss"] = float(np.mean(losses))
            if self.retrieval is not None and len(self.retrieval.clean):
                result["val_top1"], result["val_top1_shift"] = retrieval_top1(
                    self.model, self.retrieval, self.device
                )
        finally:
            self.model.train()
        return result

    # --- saving and resuming ----------------------------------------------------------------

    def _save(self, reason: str) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        write_log(self.out / LOG_FILE, self.history)
        last = self.history[-1] if self.history else {}
        meta = {
            "trained": True,
            "stopped": reason,
            "config": self.config.to_dict(),
            "data": self.data.describe(),
            "epochs": self.epoch,
            "steps": self.global_step,
            "steps_per_epoch": self.steps_per_epoch,
            "position": {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch},
            "effective_lr": self.lr,
            "train_seconds": round(self.elapsed(), 1),
            "validation": {k: last.get(k) for k in ("val_loss", "val_top1", "val_top1_shift")},
            "history": self.history,
            "hardware": hardware_description(self.device, self.dist),
            "versions": versions(),
        }
        # The state first: a model checkpoint newer than the state would be resumed from
        # older weights, the other way round costs at most one epoch's log line.
        save_train_state(self.out / STATE_FILE, self._state())
        fault_point("train.save")
        save_checkpoint(self.out / MODEL_FILE, self.model, meta)

    def _state(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "format_version": STATE_VERSION,
            "config": self.config.to_dict(),
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "epoch_losses": list(self._epoch_losses),
            "elapsed_s": self.elapsed(),
            "history": self.history,
            "rng": capture_rng_states(),
        }

    def _restore(self, state: dict[str, Any]) -> None:
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if state.get("scaler") and self.scaler.is_enabled():
                self.scaler.load_state_dict(state["scaler"])
        except (KeyError, RuntimeError, ValueError) as exc:
            path = self.out / STATE_FILE
            raise CheckpointError(f"{path}: does not fit this run: {exc}") from None
        self.epoch = int(state["epoch"])
        self.step_in_epoch = int(state["step_in_epoch"])
        self.global_step = int(state["global_step"])
        self._epoch_losses = [float(x) for x in state.get("epoch_losses", [])]
        self.elapsed_before = float(state.get("elapsed_s", 0.0))
        self.history = [dict(row) for row in state.get("history", [])]
        restore_rng_states(state["rng"])


# --- helpers ---------------------------------------------------------------------------------


def retrieval_top1(
    model: Fingerprinter, retrieval: RetrievalSet, device: torch.device | str = "cpu"
) -> tuple[float, float]:
    """Shares of augmented (then ±0.2 s shifted) windows whose nearest clean window is their own."""
    clean = embed_windows(model, retrieval.clean, device=device)
    found = []
    for queries in (retrieval.queries, retrieval.shifted):
        vectors = embed_windows(model, queries, device=device)
        nearest = np.argmax(vectors @ clean.T, axis=1)
        found.append(float(np.mean(nearest == np.arange(len(clean)))))
    return found[0], found[1]


def _trained_share(model: nn.Module) -> str:
    """A note of how many parameters train, when some are frozen; else empty."""
    trained = count_parameters(model, trainable_only=True)
    return "" if trained == count_parameters(model) else f" ({trained:,} trained)"


def _pick_device(name: str, dist: Distributed) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"training.device: {name!r} requested but CUDA is not available")
        if dist.world > 1:
            torch.cuda.set_device(dist.local_rank)
            return torch.device("cuda", dist.local_rank)
    return torch.device(name)


def _amp_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    if not amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _check_same_config(saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse to resume with settings that change what is computed."""
    for key, (old, new) in _flatten_diff(saved, current).items():
        if key not in RESUMABLE_CHANGES:
            raise ConfigError(
                f"{key}: the run was started with {old!r}, the configuration now says "
                f"{new!r}; resume with the run's own config.yaml or start a new run"
            )


def _flatten_diff(a: Any, b: Any, prefix: str = "") -> dict[str, tuple[Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: dict[str, tuple[Any, Any]] = {}
        for key in sorted(set(a) | set(b)):
            name = f"{prefix}.{key}" if prefix else key
            out.update(_flatten_diff(a.get(key), b.get(key), name))
        return out
    return {} if a == b else {prefix: (a, b)}


def capture_rng_states() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and Python global random states as plain data."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
    }


def restore_rng_states(states: dict[str, Any]) -> None:
    """Inverse of ``capture_rng_states``."""
    torch.set_rng_state(states["torch"])
    if states.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    np_state = states["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    py = states["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))


def save_train_state(path: Path, state: dict[str, Any]) -> Path:
    """Write a training state atomically (torch.save of plain data and tensors)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return path


def load_train_state(path: Path) -> dict[str, Any]:
    """Read a training state with ``weights_only=True``; ``CheckpointError`` if unusable."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such training state")
    state = load_torch_file(path, "training state")
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path}: not an afp training state")
    if state.get("format_version", 0) > STATE_VERSION:
        raise CheckpointError(f"{path}: training state from a newer afp; upgrade afp")
    return state


def write_log(path: Path, history: list[dict[str, float]]) -> None:
    """The CSV log (rewritten whole, atomically, so it always matches the state)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=LOG_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: _format(row.get(k)) for k in LOG_COLUMNS})
    atomic_write_text(path, buffer.getvalue())


def _format(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value


def hardware_description(device: torch.device, dist: Distributed) -> dict[str, Any]:
    """Where the run trained (for the checkpoint's metadata and the model card)."""
    info: dict[str, Any] = {
        "device": str(device),
        "processes": dist.world,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def versions() -> dict[str, str]:
    """Versions of what shaped the weights."""
    import audiomentations
    import scipy

    return {
        "afp": afp_core.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "audiomentations": audiomentations.__version__,
    }


def train(
    config: TrainConfig,
    out: Path | str | None = None,
    resume: bool = False,
    device: str | None = None,
    quiet: bool = False,
    on_note: Note | None = None,
) -> TrainResult:
    """Run (or resume) a training run; see ``Trainer``."""
    trainer = Trainer(config, out=out, device=device, quiet=quiet, on_note=on_note)
    return trainer.run(resume=resume)
