"""NAFP encoder, div-enc projection, Fingerprinter and the model registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from afp_core.config import AudioConfig, LogMelConfig, NAFPConfig
from afp_core.errors import ConfigError
from afp_core.models import (
    MODELS,
    DivEncProjection,
    Fingerprinter,
    ModelSpec,
    NAFPEncoder,
    build_model,
    count_parameters,
    embed_windows,
    list_models,
)
from afp_core.models.nafp import same_padding
from afp_core.models.widen import find_widening_factor, widen_nafp
from tests.training_fixtures import nafp_blocks

PAPER_PARAMETERS = 16_922_624
_MODELS: dict[float, Fingerprinter] = {}


def nafp(width: float) -> Fingerprinter:
    """A seeded NAFP model of ``width``, built once per test session (in eval mode)."""
    if width not in _MODELS:
        _MODELS[width] = build_model(ModelSpec("nafp", arch=NAFPConfig(width=width)), seed=0)
    return _MODELS[width].eval()


def waves(n: int, seed: int = 0, samples: int = 8000) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(n, samples, generator=gen)


# --- parameter counts and shapes -------------------------------------------------------


def test_full_width_parameter_count_matches_paper() -> None:
    model = nafp(1.0)
    total = count_parameters(model)
    print(
        f"NAFP width 1.0: {total:,} parameters "
        f"(backbone {count_parameters(model.backbone):,}, head {count_parameters(model.head):,};"
        f" paper {PAPER_PARAMETERS:,})"
    )
    assert abs(total - 16.9e6) / 16.9e6 < 0.02
    assert abs(total - PAPER_PARAMETERS) / PAPER_PARAMETERS < 0.02
    # 128 slices of Linear(8, 32) + Linear(32, 1).
    assert count_parameters(model.head) == 128 * (8 * 32 + 32 + 32 + 1)
    assert count_parameters(model.frontend) == 0
    assert not any(k.startswith("frontend.") for k in model.state_dict())


@pytest.mark.parametrize("width", [1.0, 0.5, 0.25])
def test_output_shapes_and_unit_norm(width: float) -> None:
    model = nafp(width)
    x = waves(2)
    with torch.inference_mode():
        feats = model.features(x)
        hidden = model.backbone(feats)
        out = model(x)
    assert feats.shape == (2, 1, 256, 32)
    assert hidden.shape == (2, round(1024 * width))
    assert model.backbone.output_size == (1, 1)
    assert out.shape == (2, 128)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(model.embed(feats), out)


def test_block_sizes_follow_the_input_shape() -> None:
    encoder = NAFPEncoder(NAFPConfig(width=0.125), input_shape=(100, 20))
    sizes = [block.out_size for block in encoder.blocks]
    assert sizes == [(50, 10), (25, 5), (13, 3), (7, 2), (4, 1), (2, 1), (1, 1), (1, 1)]
    assert encoder(torch.randn(2, 1, 100, 20)).shape == (2, 128)
    # A larger frequency axis keeps 2 x 1 positions after eight halvings: flattened.
    wide = NAFPEncoder(NAFPConfig(width=0.125), input_shape=(512, 32))
    assert wide.output_size == (2, 1)
    assert wide(torch.randn(1, 1, 512, 32)).shape == (1, 256)
    with pytest.raises(ValueError, match="expects"):
        encoder(torch.randn(2, 1, 256, 32))


def test_longer_window_builds_end_to_end() -> None:
    spec = ModelSpec("nafp", audio=AudioConfig(window_s=2.0), arch=NAFPConfig(width=0.125))
    model = build_model(spec, seed=0).eval()
    with torch.inference_mode():
        out = model(waves(2, samples=16000))
    assert model.backbone.input_shape == (256, 63)
    assert out.shape == (2, 128)


def test_same_padding_is_tensorflow_same() -> None:
    assert same_padding(32) == (0, 1)
    assert same_padding(5) == (1, 1)
    assert same_padding(1) == (1, 1)
    for n in range(1, 40):
        before, after = same_padding(n)
        assert (n + before + after - 3) // 2 + 1 == -(-n // 2)


@pytest.mark.parametrize("width", [0.1, 0.3])
def test_width_giving_indivisible_features_is_a_config_error(width: float) -> None:
    with pytest.raises(ConfigError, match=r"arch\.width.*not divisible by arch\.dim=128"):
        build_model(ModelSpec("nafp", arch=NAFPConfig(width=width)))


@pytest.mark.parametrize(
    ("arch", "key"),
    [
        (NAFPConfig(width=0.0), "arch.width"),
        (NAFPConfig(width=-1.0), "arch.width"),
        (NAFPConfig(dim=0), "arch.dim"),
        (NAFPConfig(proj_hidden=0), "arch.proj_hidden"),
    ],
)
def test_invalid_arch_values_are_config_errors(arch: NAFPConfig, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        build_model(ModelSpec("nafp", arch=arch))


def test_activation_is_relu_by_default_and_elu_as_the_authors_code() -> None:
    relu = build_model(ModelSpec("nafp", arch=NAFPConfig(width=0.25)), seed=0)
    elu = build_model(ModelSpec("nafp", arch=NAFPConfig(width=0.25, activation="elu")), seed=0)
    assert isinstance(nafp_blocks(relu)[0].act, torch.nn.ReLU)
    assert isinstance(nafp_blocks(elu)[0].act, torch.nn.ELU)
    # same parameters, so a checkpoint of either loads into the other's shape
    assert [p.shape for p in relu.parameters()] == [p.shape for p in elu.parameters()]
    x = torch.randn(2, 1, 256, 32)
    assert not torch.allclose(relu.eval().embed(x), elu.eval().embed(x))
    with pytest.raises(ConfigError, match=r"arch\.activation"):
        NAFPConfig(activation="gelu")


# --- projection ------------------------------------------------------------------------


def test_projection_matches_a_per_slice_reference() -> None:
    torch.manual_seed(0)
    proj = DivEncProjection(64, dim=16, hidden=8)
    x = torch.randn(5, 64)
    ref = []
    for i in range(16):
        xi = x[:, 4 * i : 4 * i + 4]
        h = F.elu(xi @ proj.weight1[i] + proj.bias1[i])
        ref.append(h @ proj.weight2[i] + proj.bias2[i])
    ref_t = torch.stack(ref, dim=1)
    torch.testing.assert_close(proj.project_unnormalised(x), ref_t)
    torch.testing.assert_close(proj(x), F.normalize(ref_t, dim=1))


def test_projection_slices_are_independent() -> None:
    torch.manual_seed(1)
    proj = DivEncProjection(1024, dim=128, hidden=32)
    x = torch.randn(3, 1024)
    changed = x.clone()
    changed[:, 5 * 8 : 6 * 8] += torch.randn(3, 8)
    with torch.no_grad():
        diff = (proj.project_unnormalised(changed) - proj.project_unnormalised(x)).abs()
    assert torch.all(diff[:, 5] > 0)
    assert torch.all(diff[:, :5] == 0) and torch.all(diff[:, 6:] == 0)


def test_projection_init_is_like_linear_and_validates() -> None:
    proj = DivEncProjection(1024, dim=128, hidden=32)
    assert proj.weight1.shape == (128, 8, 32) and proj.weight2.shape == (128, 32)
    assert proj.weight1.abs().max() <= 8**-0.5 and proj.bias1.abs().max() <= 8**-0.5
    assert proj.weight2.abs().max() <= 32**-0.5 and proj.bias2.abs().max() <= 32**-0.5
    # Roughly uniform over the bound, not all near zero.
    assert proj.weight1.abs().max() > 0.9 * 8**-0.5
    with pytest.raises(ValueError, match="not divisible"):
        DivEncProjection(1000, dim=128)
    with pytest.raises(ValueError, match=r"expects \(batch, 1024\)"):
        proj(torch.randn(2, 512))


# --- determinism and batch independence -------------------------------------------------


def test_seeded_build_is_deterministic_and_keeps_global_rng() -> None:
    spec = ModelSpec("nafp", arch=NAFPConfig(width=0.25))
    state = torch.get_rng_state()
    a = build_model(spec, seed=7).state_dict()
    b = build_model(spec, seed=7).state_dict()
    c = build_model(spec, seed=8).state_dict()
    assert torch.equal(torch.get_rng_state(), state)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["head.weight1"], c["head.weight1"])
    assert not torch.equal(
        a["backbone.blocks.0.conv_time.weight"], c["backbone.blocks.0.conv_time.weight"]
    )


def test_output_does_not_depend_on_batch_mates() -> None:
    model = nafp(0.25)
    x = waves(4, seed=3)
    loud = x.clone()
    loud[1:] *= 50.0
    with torch.inference_mode():
        together = model(x)
        alone = torch.cat([model(x[i : i + 1]) for i in range(4)])
        with_loud = model(loud)
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(with_loud[0], together[0], atol=1e-5, rtol=1e-4)


def test_embed_windows_batches_like_one_forward() -> None:
    model = nafp(0.25).train()
    windows = waves(5, seed=4).numpy()
    got = embed_windows(model, windows, batch_size=2)
    assert model.training  # mode restored
    model.eval()
    with torch.inference_mode():
        want = model(torch.from_numpy(windows)).numpy()
    assert got.shape == (5, 128) and got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)
    # Non-contiguous float64 input is accepted.
    strided = np.repeat(windows.astype(np.float64), 2, axis=0)[::2]
    np.testing.assert_allclose(embed_windows(model, strided, batch_size=3), want, atol=1e-5)
    empty = embed_windows(model, np.zeros((0, 8000), np.float32))
    assert empty.shape == (0, 128) and empty.dtype == np.float32
    with pytest.raises(ValueError, match="8000"):
        embed_windows(model, np.zeros((2, 4000), np.float32))


# --- spec and registry -----------------------------------------------------------------


def test_spec_round_trips_and_fills_model_defaults() -> None:
    spec = ModelSpec("nafp")
    assert spec.frontend == LogMelConfig() and spec.arch == NAFPConfig()
    custom = ModelSpec("nafp", AudioConfig(hop_s=0.25), arch=NAFPConfig(width=0.5))
    d = custom.to_dict()
    assert d["name"] == "nafp" and d["arch"]["width"] == 0.5 and d["audio"]["hop_s"] == 0.25
    assert ModelSpec.from_dict(d) == custom
    assert ModelSpec.from_dict({"name": "nafp"}) == spec


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        ({"name": "wav2vec"}, r"unknown model 'wav2vec' \(known models: .*nafp"),
        ({}, r"model\.name: missing"),
        ({"name": 3}, r"model\.name: expected a string"),
        ({"name": "nafp", "extra": 1}, r"model\.extra: unknown key"),
        ({"name": "nafp", "arch": {"depth": 3}}, r"model\.arch\.depth: unknown key"),
        ({"name": "nafp", "arch": {"width": "wide"}}, r"model\.arch\.width: expected a number"),
        ({"name": "nafp", "frontend": {"n_mels": 1.5}}, r"model\.frontend\.n_mels"),
        ([1, 2], r"model: expected a mapping"),
    ],
)
def test_spec_from_dict_is_strict(data: object, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        ModelSpec.from_dict(data)


def test_spec_rejects_config_of_the_wrong_class() -> None:
    with pytest.raises(ConfigError, match="needs a NAFPConfig"):
        ModelSpec("nafp", arch=LogMelConfig())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown model"):
        ModelSpec("nope")


def test_registry_lists_nafp() -> None:
    entries = list_models()
    assert "nafp" in [e.name for e in entries]
    entry = MODELS["nafp"]
    assert entry.arch_config is NAFPConfig and entry.frontend_config is LogMelConfig
    assert entry.description


# --- widening a trained narrow model ---------------------------------------------------


def test_widening_keeps_the_fingerprints_and_breaks_the_copies_symmetry() -> None:
    narrow, wide = nafp(0.25), build_model(ModelSpec("nafp", arch=NAFPConfig(width=0.5)), seed=1)
    assert find_widening_factor(narrow, wide) == 2
    assert widen_nafp(narrow, wide, seed=0) == 2
    with torch.no_grad():
        torch.testing.assert_close(wide.eval()(waves(8)), narrow(waves(8)), atol=1e-5, rtol=0)
    # a channel's copies read the same input with different shares, so training can part them
    first = nafp_blocks(wide)[1].conv_time.weight
    assert not torch.equal(first[:, 0::2], first[:, 1::2])
    torch.testing.assert_close(
        first[:, 0::2] + first[:, 1::2],
        nafp_blocks(narrow)[1].conv_time.weight.repeat_interleave(2, dim=0),
    )


@pytest.mark.parametrize(
    ("arch", "why"),
    [
        (NAFPConfig(width=0.25), "same width"),
        (NAFPConfig(width=0.375), "not a whole factor"),
        (NAFPConfig(width=0.5, activation="elu"), "another activation"),
    ],
)
def test_widening_refuses_what_it_cannot_map(arch: NAFPConfig, why: str) -> None:
    target = build_model(ModelSpec("nafp", arch=arch), seed=0)
    assert find_widening_factor(nafp(0.25), target) is None, why
    with pytest.raises(ConfigError, match=r"cannot widen nafp width 0\.25"):
        widen_nafp(nafp(0.25), target)
