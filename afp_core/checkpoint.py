"""Checkpoint files: a model's spec, weights and metadata in one torch file.

Format (``torch.save`` of a plain dict, readable with ``weights_only=True``)::

    {"format": "afp-checkpoint", "format_version": 1,
     "model": ModelSpec.to_dict(), "state_dict": {name: tensor},
     "meta": {"afp_version", "torch_version", "created", "frontend",
              ...caller's metadata}}

Loading always uses ``weights_only=True``: a checkpoint is someone else's pickle, and
only tensors and plain containers are accepted. Every problem with a file is a one-line
``CheckpointError`` naming the file.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import afp_core
from afp_core.config import to_dict
from afp_core.errors import CheckpointError, ConfigError
from afp_core.fileutil import atomic_path, file_sha256, utc_now
from afp_core.models.fingerprinter import Fingerprinter
from afp_core.models.registry import ModelSpec, build_model, get_model_entry

FORMAT = "afp-checkpoint"
FORMAT_VERSION = 1

# torch's weights-only unpickler messages when a file references a non-allowlisted object.
_REFUSED = re.compile(
    r"GLOBAL (\S+) was not an allowed global|GLOBAL (?:\S+) whose module (\S+) is blocked"
    r"|Can only (?:create new object|build)"
)


@dataclasses.dataclass
class Checkpoint:
    """A loaded checkpoint; ``model`` is in eval mode."""

    path: Path
    model: Fingerprinter
    spec: ModelSpec
    meta: dict[str, Any]
    sha256: str


def save_checkpoint(
    path: str | os.PathLike[str], model: Fingerprinter, meta: dict[str, Any] | None = None
) -> Path:
    """Write ``model`` and ``meta`` to ``path`` atomically; parent folders are created.

    ``meta`` may hold plain values (str, int, float, bool, None, lists, dicts with string
    keys, tensors); numpy scalars and arrays, tuples and paths are converted. The
    afp/torch versions, the creation time (UTC, ISO 8601) and the front-end the model
    needs (``describe_frontend``: what ``afp info`` shows) are added.
    """
    path = Path(path)
    stamp = {
        "afp_version": afp_core.__version__,
        "torch_version": torch.__version__,  # a str subclass: _plain_meta makes it a str
        "created": utc_now(),
        "frontend": describe_frontend(model.spec),
    }
    plain_meta = _plain_meta({**(meta or {}), **stamp}, "meta")
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": model.spec.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": plain_meta,
    }
    # Through a file object: given a path, torch names the archive's root folder after
    # the (temporary) file name.
    with atomic_path(path) as tmp, tmp.open("wb") as handle:
        torch.save(payload, handle)
    return path


def average_checkpoints(
    paths: Sequence[str | os.PathLike[str]], weights: Sequence[float] | None = None
) -> tuple[Fingerprinter, dict[str, Any]]:
    """A model whose weights are the (weighted) mean of the checkpoints', and its metadata.

    Averaging the weights of stages of one training run (each continuing the one
    before) often lands nearer the middle of a wide optimum than either end ("model
    soups", Wortsman et al. 2022). All checkpoints must hold the same model spec and come
    from the same song split, so that the test songs stay unseen. The metadata is the
    last checkpoint's (its config, data and history), with ``averaged_from`` listing
    each source's file, sha256, weight, steps and retrieval check.
    """
    if len(paths) < 2:
        raise ConfigError("averaging needs at least two checkpoints")
    weights = list(weights) if weights is not None else [1.0] * len(paths)
    if len(weights) != len(paths) or min(weights) < 0 or sum(weights) <= 0:
        raise ConfigError(f"weights: {weights} do not fit {len(paths)} checkpoints")
    loaded = [load_checkpoint(path) for path in paths]
    first = loaded[0]
    for ckpt in loaded[1:]:
        if ckpt.spec != first.spec:
            raise CheckpointError(f"{ckpt.path}: its model spec differs from {first.path}'s")
        split = (ckpt.meta.get("data") or {}).get("split_seed")
        if split != (first.meta.get("data") or {}).get("split_seed"):
            raise CheckpointError(f"{ckpt.path}: trained on another song split than {first.path}")
    total = float(sum(weights))
    states = [ckpt.model.state_dict() for ckpt in loaded]
    averaged = {}
    for name, tensor in states[-1].items():
        if not tensor.is_floating_point():
            averaged[name] = tensor  # counters: the last stage's
            continue
        mean = torch.zeros_like(tensor, dtype=torch.float64)
        for state, weight in zip(states, weights, strict=True):
            mean += (weight / total) * state[name].double()
        averaged[name] = mean.to(tensor.dtype)
    model = build_model(first.spec)
    model.load_state_dict(averaged, strict=True)
    model.eval()
    meta = {
        key: value
        for key, value in loaded[-1].meta.items()
        # the last stage's own retrieval check is not the average's
        if key not in ("afp_version", "torch_version", "created", "frontend", "validation")
    }
    meta["averaged_from"] = [
        {
            "file": str(c.path),
            "sha256": c.sha256,
            "weight": w / total,
            "steps": c.meta.get("steps"),
            "validation": c.meta.get("validation"),
        }
        for c, w in zip(loaded, weights, strict=True)
    ]
    return model, meta


def describe_frontend(spec: ModelSpec) -> dict[str, Any]:
    """The front-end a model needs: ``{"name", "sample_rate", "window_s", "config"}``.

    ``name`` is the registry's ``frontend_name`` ("log-mel 256 x 32"), ``config`` the
    front-end's settings; queries and indexed audio must go through exactly this.
    """
    return {
        "name": get_model_entry(spec.name).frontend_name,
        "sample_rate": spec.audio.sample_rate,
        "window_s": spec.audio.window_s,
        "config": to_dict(spec.frontend),
    }


def load_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> Checkpoint:
    """Read, validate and rebuild a checkpoint; the model is on ``map_location``, in eval mode."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file")
    try:
        sha256 = file_sha256(path)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {exc.strerror or exc}") from None
    data = load_torch_file(path)
    spec, state_dict, meta = _validate_payload(path, data)
    try:
        model = build_model(spec)
    except ConfigError as exc:
        raise CheckpointError(f"{path}: invalid model spec: {exc}") from None
    _check_state_dict(path, spec, model.state_dict(), state_dict)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the model: {_first_line(exc)}") from None
    try:
        model.to(torch.device(map_location))
    except (RuntimeError, ValueError, AssertionError) as exc:  # CPU-only torch asserts
        raise CheckpointError(
            f"{path}: cannot move the model to {map_location}: {_first_line(exc)}"
        ) from None
    model.eval()
    return Checkpoint(path=path, model=model, spec=spec, meta=meta, sha256=sha256)


def _check_zip_crc(path: Path) -> None:
    """Catch damaged tensor data, which torch's zip reader loads without complaint."""
    if not zipfile.is_zipfile(path):
        return  # not a zip (legacy torch format or garbage): torch.load decides
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except Exception:  # BadZipFile, zlib/struct errors...: a damaged archive either way
        raise CheckpointError(f"{path}: corrupt zip archive") from None
    if bad is not None:
        raise CheckpointError(f"{path}: corrupt file (checksum mismatch in {bad})")


def load_torch_file(path: Path, what: str = "checkpoint") -> Any:
    """What ``torch.load(weights_only=True)`` reads from ``path`` (a checkpoint, a training
    state); any problem is a one-line ``CheckpointError`` naming the file, never torch's
    several lines of advice (which ends in loading the pickle unrestricted)."""
    _check_zip_crc(path)
    try:
        with warnings.catch_warnings():
            # Pickle-protocol notices about foreign files add nothing to the error below.
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = _REFUSED.search(str(exc))
        if refused:
            name = next((g for g in refused.groups() if g), None)
            held = f" ({name.rstrip('.')})" if name else ""
            raise CheckpointError(
                f"{path}: refused: the file holds a Python object{held} other than tensors "
                f"and plain containers; {what}s are loaded with weights_only=True"
            ) from None
        raise CheckpointError(f"{path}: not a torch {what} file") from None
    except EOFError:
        raise CheckpointError(f"{path}: truncated or empty file") from None
    except OSError as exc:
        if exc.errno == errno.EINVAL:  # torch's zip reader seeking past a cut-off end
            raise CheckpointError(f"{path}: corrupt or truncated torch file") from None
        raise CheckpointError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except RuntimeError as exc:  # torch's zip reader: a damaged or cut-off archive
        raise CheckpointError(
            f"{path}: corrupt or truncated torch file ({_first_line(exc)})"
        ) from None
    except Exception:  # the legacy unpickler fails on foreign bytes with any error type
        raise CheckpointError(f"{path}: not a torch {what} file") from None


def _validate_payload(path: Path, data: Any) -> tuple[ModelSpec, dict[str, torch.Tensor], dict]:
    if not isinstance(data, dict):
        raise CheckpointError(
            f"{path}: not an afp checkpoint (holds a {type(data).__name__}, not a dict)"
        )
    if data.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not an afp checkpoint (format tag {data.get('format')!r}, "
            f"expected {FORMAT!r})"
        )
    version = data.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(f"{path}: invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version} is newer than this afp "
            f"(reads up to {FORMAT_VERSION}); upgrade afp"
        )
    if version < 1:
        raise CheckpointError(f"{path}: unsupported checkpoint format version {version}")
    try:
        spec = ModelSpec.from_dict(data.get("model"))
    except ConfigError as exc:
        raise CheckpointError(f"{path}: invalid model spec: {exc}") from None
    state_dict = data.get("state_dict")
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{path}: state_dict missing or not a dict")
    for key, value in state_dict.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: state_dict entry {key!r} is not a named tensor")
    meta = data.get("meta", {})
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: meta is a {type(meta).__name__}, not a dict")
    return spec, state_dict, meta


def _check_state_dict(
    path: Path,
    spec: ModelSpec,
    expected: dict[str, torch.Tensor],
    found: dict[str, torch.Tensor],
) -> None:
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    mismatched = [
        k for k in expected if k in found and tuple(found[k].shape) != tuple(expected[k].shape)
    ]
    if not (missing or unexpected or mismatched):
        return
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (first: {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (first: {unexpected[0]})")
    if mismatched:
        key = mismatched[0]
        problems.append(
            f"{len(mismatched)} with wrong shape (first: {key} is "
            f"{tuple(found[key].shape)}, model needs {tuple(expected[key].shape)})"
        )
    raise CheckpointError(
        f"{path}: weights do not match model {spec.name!r}: " + "; ".join(problems)
    )


def _plain_meta(value: Any, key: str) -> Any:
    """``value`` with only types that weights-only loading accepts; TypeError otherwise."""
    if isinstance(value, np.generic):
        return value.item()
    # Exact builtin types: subclasses (np.float64, enums) would be pickled as globals.
    for plain in (bool, int, float, str):
        if isinstance(value, plain):
            return plain(value)
    if value is None or isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, list | tuple):
        return [_plain_meta(v, f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{key}: checkpoint metadata keys must be strings, got {k!r}")
            out[k] = _plain_meta(v, f"{key}.{k}")
        return out
    raise TypeError(
        f"{key}: checkpoint metadata cannot hold a {type(value).__name__} "
        "(use str, int, float, bool, None, lists, dicts or tensors)"
    )


def _first_line(exc: BaseException) -> str:
    """The first sentence of an exception's message, for one-line errors."""
    lines = str(exc).strip().splitlines()
    text = lines[0].split(". ")[0].rstrip(".") if lines else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
