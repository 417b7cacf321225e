"""`afp models` lists every registered architecture; checkpoints and `afp info` name the
front-end a model needs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from afp_core.checkpoint import describe_frontend, load_checkpoint, save_checkpoint
from afp_core.cli import main
from afp_core.config import LogMelConfig, NAFPConfig, ResNetSTAConfig, to_dict
from afp_core.database import FingerprintDB
from afp_core.features import LogMel
from afp_core.indexing import describe_model
from afp_core.models import (
    MODELS,
    Fingerprinter,
    ModelEntry,
    ModelSpec,
    build_model,
    count_parameters,
    list_models,
)

_COUNTS: dict[str, int] = {}


def real_count(name: str) -> int:
    """Parameters of ``name`` at its defaults, from a real build on the CPU."""
    if name not in _COUNTS:
        _COUNTS[name] = count_parameters(build_model(ModelSpec(name)))
    return _COUNTS[name]


def test_models_table_lists_every_registered_model(capsys) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["model.name", "parameters", "front-end", "description"]
    names = [entry.name for entry in list_models()]
    assert {"nafp", "resnet_sta"} <= set(names)
    rows = {line.split()[0]: line for line in lines[1 : 1 + len(names)]}
    assert list(rows) == names
    for entry in list_models():
        row = rows[entry.name]
        assert row.split()[1] == f"{real_count(entry.name):,}"
        assert entry.frontend_name in row and row.endswith(entry.description)
    # aligned: every column starts at the same offset on every line
    for column in ("parameters", "front-end", "description"):
        start = lines[0].index(column)
        for line in lines[1 : 1 + len(names)]:
            assert line[start - 2 : start] == "  " and line[start] != " ", (column, line)
    assert rows["resnet_sta"].split()[1] == "20,026,304"
    assert "model.name" in lines[-1] and "training config" in lines[-1]


def test_models_json_gives_one_object_per_model(capsys) -> None:
    assert main(["models", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert [item["name"] for item in listing] == [entry.name for entry in list_models()]
    for item in listing:
        entry = MODELS[item["name"]]
        assert item["parameters"] == real_count(entry.name)
        assert item["frontend"] == entry.frontend_name
        assert item["description"] == entry.description
        assert item["arch_defaults"] == to_dict(entry.arch_config())
    by_name = {item["name"]: item for item in listing}
    assert by_name["resnet_sta"]["parameters"] == 20_026_304
    assert abs(by_name["nafp"]["parameters"] - 16_922_624) / 16_922_624 < 0.02


class _ValueDependent(nn.Module):
    """A backbone whose construction reads a tensor's value: impossible on the meta device."""

    def __init__(self) -> None:
        super().__init__()
        size = int(torch.tensor(3).item())
        self.linear = nn.Linear(256 * 32, 128 * size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


def _build_value_dependent(spec: ModelSpec) -> Fingerprinter:
    assert isinstance(spec.frontend, LogMelConfig)  # the entry's frontend_config
    frontend = LogMel(spec.frontend, sample_rate=spec.audio.sample_rate)
    return Fingerprinter(spec, frontend, _ValueDependent(), nn.Identity())


def test_a_model_registered_later_is_listed_with_its_count(monkeypatch, capsys) -> None:
    entry = ModelEntry(
        name="zz-later",
        description="registered by a test",
        arch_config=NAFPConfig,
        frontend_config=LogMelConfig,
        frontend_name="log-mel 256 x 32",
        build=_build_value_dependent,
    )
    monkeypatch.setitem(MODELS, entry.name, entry)
    assert main(["models", "--json"]) == 0
    listing = {item["name"]: item for item in json.loads(capsys.readouterr().out)}
    assert listing["zz-later"]["parameters"] == 256 * 32 * 384 + 384
    assert listing["zz-later"]["description"] == "registered by a test"


def test_models_help_names_the_command(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert "models" in capsys.readouterr().out


# --- the checkpoint says which front-end it needs -----------------------------------


@pytest.fixture(scope="module")
def sta_checkpoint(tmp_path_factory) -> Path:
    model = build_model(ModelSpec("resnet_sta", arch=ResNetSTAConfig(width=0.25)), seed=0)
    path = tmp_path_factory.mktemp("ckpt") / "sta.pt"
    # a caller cannot misstate the front-end: it is derived from the model's spec
    return save_checkpoint(path, model, {"trained": False, "frontend": "something else"})


def test_checkpoint_meta_names_the_front_end(sta_checkpoint: Path) -> None:
    checkpoint = load_checkpoint(sta_checkpoint)
    expected = {
        "name": "log-mel 256 x 32",
        "sample_rate": 8000,
        "window_s": 1.0,
        "config": to_dict(LogMelConfig()),
    }
    assert checkpoint.meta["frontend"] == expected
    assert describe_frontend(checkpoint.spec) == expected
    assert checkpoint.spec.name == "resnet_sta"
    assert count_parameters(checkpoint.model) == count_parameters(
        build_model(ModelSpec("resnet_sta", arch=ResNetSTAConfig(width=0.25)))
    )


def test_info_shows_the_front_end(sta_checkpoint: Path, tmp_path: Path, capsys) -> None:
    db_dir = tmp_path / "db"
    model_info = describe_model(load_checkpoint(sta_checkpoint))
    FingerprintDB.create(db_dir, model_info=model_info, checkpoint=sta_checkpoint)
    assert main(["info", str(db_dir)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("front"))
    assert "log-mel 256 x 32 at 8000 Hz, 1.0 s windows" in row and "n_mels=256" in row
    assert main(["info", str(db_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model_info"]["name"] == "resnet_sta"
    assert info["model_info"]["frontend"]["name"] == "log-mel 256 x 32"
    assert info["model_info"]["frontend"]["config"]["hop_length"] == 256


def test_info_derives_the_front_end_of_an_older_checkpoint(
    sta_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    model_info = describe_model(load_checkpoint(sta_checkpoint))
    del model_info["checkpoint_meta"]["frontend"]  # as written before checkpoints had it
    db_dir = tmp_path / "db"
    FingerprintDB.create(db_dir, model_info=model_info, checkpoint=sta_checkpoint)
    assert main(["info", str(db_dir), "--json"]) == 0
    frontend = json.loads(capsys.readouterr().out)["model_info"]["frontend"]
    assert frontend == describe_frontend(ModelSpec("resnet_sta"))
