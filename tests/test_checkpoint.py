"""Checkpoint files: round trip, and a one-line CheckpointError for every bad file."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import afp_core
from afp_core.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    average_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from afp_core.config import NAFPConfig
from afp_core.errors import CheckpointError
from afp_core.fileutil import atomic_path, atomic_write_bytes, file_sha256
from afp_core.models import Fingerprinter, ModelSpec, build_model

SPEC = ModelSpec("nafp", arch=NAFPConfig(width=0.25))
_CALLS: list[str] = []


def record_call(what: str) -> str:
    _CALLS.append(what)
    return what


class Sneaky:
    """Unpickling this would call ``record_call``: a stand-in for a malicious payload."""

    def __reduce__(self) -> tuple[Callable[[str], str], tuple[str]]:
        return record_call, ("unpickled",)


@pytest.fixture(scope="module")
def model() -> Fingerprinter:
    return build_model(SPEC, seed=0).eval()


@pytest.fixture(scope="module")
def saved(model: Fingerprinter, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "nested" / "dir" / "model.pt"
    meta = {
        "steps": 120,
        "data": {"songs": 10, "sources": ("fma", Path("/data/fma"))},
        "val_top1": np.float64(0.75),
        "curve": np.arange(3, dtype=np.float32),
        "tensor": torch.arange(4),
    }
    assert save_checkpoint(path, model, meta) == path
    return path


@pytest.fixture(scope="module")
def payload(saved: Path) -> dict[str, Any]:
    return torch.load(saved, weights_only=True)


def waves(n: int = 3) -> torch.Tensor:
    return 0.1 * torch.randn(n, 8000, generator=torch.Generator().manual_seed(5))


def expect_error(path: Path, pattern: str = "") -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message
    assert "\n" not in message
    if pattern:
        assert pattern in message, message
    return message


def resave(payload: dict[str, Any], path: Path, **changes: Any) -> Path:
    torch.save({**payload, **changes}, path)
    return path


# --- round trip --------------------------------------------------------------------------


def test_round_trip_gives_identical_outputs(model: Fingerprinter, saved: Path) -> None:
    ckpt = load_checkpoint(saved)
    assert ckpt.path == saved
    assert ckpt.spec == SPEC and ckpt.model.spec == SPEC
    assert not ckpt.model.training
    assert ckpt.sha256 == hashlib.sha256(saved.read_bytes()).hexdigest()
    assert ckpt.sha256 == file_sha256(saved)
    x = waves()
    with torch.inference_mode():
        assert torch.equal(ckpt.model(x), model(x))


def test_meta_is_plain_and_stamped(saved: Path, payload: dict[str, Any]) -> None:
    assert payload["format"] == FORMAT and payload["format_version"] == FORMAT_VERSION
    assert payload["model"] == SPEC.to_dict()
    meta = load_checkpoint(saved).meta
    assert meta["steps"] == 120
    assert meta["data"] == {"songs": 10, "sources": ["fma", "/data/fma"]}
    assert meta["val_top1"] == 0.75 and type(meta["val_top1"]) is float
    assert meta["curve"] == [0.0, 1.0, 2.0]
    assert torch.equal(meta["tensor"], torch.arange(4))
    assert meta["afp_version"] == afp_core.__version__
    assert meta["torch_version"] == torch.__version__
    assert meta["created"].endswith("+00:00")


def test_save_leaves_no_temporary_files(saved: Path) -> None:
    assert [p.name for p in saved.parent.iterdir()] == ["model.pt"]


def test_meta_with_an_object_is_rejected_before_writing(
    model: Fingerprinter, tmp_path: Path
) -> None:
    path = tmp_path / "m.pt"
    with pytest.raises(TypeError, match=r"meta\.extra\.obj"):
        save_checkpoint(path, model, {"extra": {"obj": object()}})
    assert list(tmp_path.iterdir()) == []


def test_map_location_and_eval_mode(saved: Path) -> None:
    ckpt = load_checkpoint(saved, map_location=torch.device("cpu"))
    assert all(p.device.type == "cpu" for p in ckpt.model.parameters())


# --- bad files ---------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    expect_error(tmp_path / "nope.pt", "no such checkpoint file")
    expect_error(tmp_path, "not a file")


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "random.pt"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    expect_error(path)


def test_text_and_empty_files(tmp_path: Path) -> None:
    text = tmp_path / "notes.pt"
    text.write_text("hello world\n")
    expect_error(text, "not a torch checkpoint")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    expect_error(empty, "empty")


def test_truncated_file(saved: Path, tmp_path: Path) -> None:
    data = saved.read_bytes()
    for cut in (len(data) // 2, len(data) - 100, 30):
        path = tmp_path / f"cut{cut}.pt"
        path.write_bytes(data[:cut])
        expect_error(path)


def test_damaged_tensor_data(saved: Path, tmp_path: Path) -> None:
    data = bytearray(saved.read_bytes())
    middle = len(data) // 2  # inside the tensor data, which torch reads without a CRC check
    data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
    path = tmp_path / "flipped.pt"
    path.write_bytes(bytes(data))
    expect_error(path, "checksum mismatch")


def test_plain_tensor(tmp_path: Path) -> None:
    path = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), path)
    expect_error(path, "not an afp checkpoint (holds a Tensor")


def test_wrong_format_tag_and_version(payload: dict[str, Any], tmp_path: Path) -> None:
    expect_error(resave(payload, tmp_path / "tag.pt", format="other"), "format tag 'other'")
    expect_error(resave(payload, tmp_path / "v.pt", format_version=99), "newer than this afp")
    expect_error(resave(payload, tmp_path / "v0.pt", format_version="1"), "format_version")
    bare = {k: v for k, v in payload.items() if k != "format"}
    torch.save(bare, tmp_path / "bare.pt")
    expect_error(tmp_path / "bare.pt", "not an afp checkpoint")


def test_state_dict_missing_key(payload: dict[str, Any], tmp_path: Path) -> None:
    state = dict(payload["state_dict"])
    del state["head.weight2"]
    message = expect_error(resave(payload, tmp_path / "m.pt", state_dict=state))
    assert "1 missing (first: head.weight2)" in message


def test_state_dict_wrong_shape_and_extra_key(payload: dict[str, Any], tmp_path: Path) -> None:
    state = dict(payload["state_dict"])
    state["head.bias2"] = torch.zeros(64)
    state["head.extra"] = torch.zeros(1)
    message = expect_error(resave(payload, tmp_path / "s.pt", state_dict=state))
    assert "1 unexpected (first: head.extra)" in message
    assert "head.bias2 is (64,), model needs (128,)" in message


def test_spec_for_another_width(payload: dict[str, Any], tmp_path: Path) -> None:
    model = dict(payload["model"], arch={"width": 0.5, "dim": 128, "proj_hidden": 32})
    message = expect_error(resave(payload, tmp_path / "w.pt", model=model))
    assert "wrong shape" in message


def test_state_dict_not_tensors(payload: dict[str, Any], tmp_path: Path) -> None:
    expect_error(resave(payload, tmp_path / "n.pt", state_dict=[1, 2]), "state_dict")
    state = dict(payload["state_dict"], **{"head.bias2": [0.0] * 128})
    expect_error(resave(payload, tmp_path / "t.pt", state_dict=state), "head.bias2")


@pytest.mark.parametrize(
    ("model_dict", "pattern"),
    [
        ({"name": "wav2vec"}, "unknown model 'wav2vec' (known models: "),
        ({"name": "nafp", "arch": {"depth": 3}}, "model.arch.depth: unknown key"),
        ({"name": "nafp", "arch": {"width": 0.1}}, "not divisible"),
        ("nafp", "model: expected a mapping"),
    ],
)
def test_invalid_model_spec(
    payload: dict[str, Any], tmp_path: Path, model_dict: object, pattern: str
) -> None:
    message = expect_error(resave(payload, tmp_path / "spec.pt", model=model_dict), pattern)
    assert "invalid model spec" in message


def test_pickled_python_object_is_refused(payload: dict[str, Any], tmp_path: Path) -> None:
    path = resave(payload, tmp_path / "evil.pt", meta={"note": Sneaky()})
    _CALLS.clear()
    message = expect_error(path, "refused")
    assert "record_call" in message
    assert _CALLS == []


# --- file helpers --------------------------------------------------------------------------


def test_atomic_path_keeps_the_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b.bin"
    atomic_write_bytes(target, b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert [p.name for p in target.parent.iterdir()] == ["b.bin"]
    assert file_sha256(target) == hashlib.sha256(b"old").hexdigest()


def test_average_checkpoints_means_the_weights_and_names_its_sources(tmp_path: Path) -> None:
    a, b = build_model(SPEC, seed=0), build_model(SPEC, seed=1)
    meta = {"steps": 100, "data": {"split_seed": 0}, "validation": {"val_top1": 0.8}}
    path_a = save_checkpoint(tmp_path / "a.pt", a, meta)
    path_b = save_checkpoint(tmp_path / "b.pt", b, {**meta, "steps": 200})
    model, averaged_meta = average_checkpoints([path_a, path_b], weights=[3, 1])
    name = next(k for k, v in a.state_dict().items() if v.is_floating_point())
    expected = 0.75 * a.state_dict()[name] + 0.25 * b.state_dict()[name]
    assert torch.allclose(model.state_dict()[name], expected, atol=1e-6)
    assert averaged_meta["steps"] == 200 and "validation" not in averaged_meta
    sources = averaged_meta["averaged_from"]
    assert [s["weight"] for s in sources] == [0.75, 0.25]
    assert sources[0]["sha256"] == file_sha256(path_a)
    out = save_checkpoint(tmp_path / "avg.pt", model, averaged_meta)
    assert load_checkpoint(out).meta["averaged_from"][1]["steps"] == 200


def test_average_checkpoints_refuses_another_split_or_model(tmp_path: Path) -> None:
    model = build_model(SPEC, seed=0)
    first = save_checkpoint(tmp_path / "a.pt", model, {"data": {"split_seed": 0}})
    other_split = save_checkpoint(tmp_path / "b.pt", model, {"data": {"split_seed": 1}})
    with pytest.raises(CheckpointError, match=r"b\.pt: trained on another song split"):
        average_checkpoints([first, other_split])
    wider = build_model(ModelSpec("nafp", arch=NAFPConfig(width=0.5)), seed=0)
    other_model = save_checkpoint(tmp_path / "c.pt", wider, {"data": {"split_seed": 0}})
    with pytest.raises(CheckpointError, match=r"c\.pt: its model spec differs"):
        average_checkpoints([first, other_model])
