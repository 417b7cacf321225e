"""ResNet+STA: size against the paper, shapes, batch independence, and the attention mask."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from afp_core.config import ResNetSTAConfig
from afp_core.errors import ConfigError
from afp_core.models import (
    MODELS,
    Fingerprinter,
    ModelSpec,
    ResNetSTAEncoder,
    SpectroTemporalAttention,
    build_model,
    count_parameters,
)
from afp_core.models.resnet_sta import STABlock, group_norm

PAPER_PARAMETERS = 19_968_256
_MODELS: dict[float, Fingerprinter] = {}


def resnet_sta(width: float) -> Fingerprinter:
    """A seeded ResNet+STA of ``width``, built once per test session (in eval mode)."""
    if width not in _MODELS:
        spec = ModelSpec("resnet_sta", arch=ResNetSTAConfig(width=width))
        _MODELS[width] = build_model(spec, seed=0)
    return _MODELS[width].eval()


def attention(model: Fingerprinter) -> list[SpectroTemporalAttention]:
    """The attention modules of a ResNet+STA model's encoder."""
    assert isinstance(model.backbone, ResNetSTAEncoder)
    return model.backbone.attention_modules()


def waves(n: int, seed: int = 0, samples: int = 8000) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(n, samples, generator=gen)


def test_registered_with_log_mel_front_end() -> None:
    entry = MODELS["resnet_sta"]
    assert entry.arch_config is ResNetSTAConfig
    assert entry.frontend_name == "log-mel 256 x 32"
    assert isinstance(ModelSpec("resnet_sta").arch, ResNetSTAConfig)


def test_full_width_parameter_count_matches_paper() -> None:
    model = build_model(ModelSpec("resnet_sta"), seed=0)
    total = count_parameters(model)
    off = (total - PAPER_PARAMETERS) / PAPER_PARAMETERS
    print(
        f"ResNet+STA width 1.0: {total:,} parameters (backbone "
        f"{count_parameters(model.backbone):,}, head {count_parameters(model.head):,}); "
        f"paper {PAPER_PARAMETERS:,}, {100 * off:+.2f} %"
    )
    assert abs(off) < 0.05
    assert total == 20_026_304  # the design in resnet_sta.py; a change must be deliberate
    # the shared div-enc head: 128 slices of Linear(8, 32) + Linear(32, 1)
    assert model.backbone.out_features == 1024
    assert count_parameters(model.head) == 128 * (8 * 32 + 32 + 32 + 1)
    assert count_parameters(model.frontend) == 0
    blocks = [m for m in model.backbone.modules() if isinstance(m, STABlock)]
    assert len(blocks) == sum(ResNetSTAConfig().blocks) == 7
    assert len(attention(model)) == 7


@pytest.mark.parametrize("width", [0.25, 0.5])
def test_output_shapes_and_unit_norm(width: float) -> None:
    model = resnet_sta(width)
    x = waves(3)
    with torch.inference_mode():
        feats = model.features(x)
        hidden = model.backbone(feats)
        out = model(x)
        embedded = model.embed(feats)
    assert feats.shape == (3, 1, 256, 32)
    assert hidden.shape == (3, round(1024 * width))
    assert model.backbone.output_size == (8, 1)
    assert out.shape == (3, 128)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(embedded, out)
    # different windows give different fingerprints
    assert (out[0] - out[1]).abs().max() > 1e-3


def test_stage_sizes_follow_the_input_shape() -> None:
    encoder = ResNetSTAEncoder(ResNetSTAConfig(width=0.125), input_shape=(100, 20))
    # F: 100 -> 50 (stem), 50, 25, 13, 7, 4; T: 20 -> 10, 10, 5, 3, 2, 1
    assert encoder.output_size == (4, 1)
    with torch.no_grad():
        feature_map = encoder.stages(encoder.stem(torch.randn(1, 1, 100, 20)))
    assert feature_map.shape == (1, 128, 4, 1)
    assert encoder(torch.randn(2, 1, 100, 20)).shape == (2, 128)
    with pytest.raises(ValueError, match="expects"):
        encoder(torch.randn(2, 1, 256, 32))


@pytest.mark.parametrize("train", [False, True])
def test_an_item_does_not_depend_on_its_batch_mates(train: bool) -> None:
    model = resnet_sta(0.25).train(train)
    feats = torch.rand(5, 1, 256, 32) * -80.0
    try:
        with torch.no_grad():
            together = model.embed(feats)
            alone = torch.cat([model.embed(feats[i : i + 1]) for i in range(5)])
            # the same item among other batch-mates
            mixed = model.embed(torch.cat([feats[2:3], torch.rand(3, 1, 256, 32) * -80.0]))
    finally:
        model.eval()
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(mixed[0], together[2], atol=1e-5, rtol=1e-4)


def test_a_gradient_step_changes_the_attention_parameters() -> None:
    model = build_model(ModelSpec("resnet_sta", arch=ResNetSTAConfig(width=0.25)), seed=1)
    model.train()
    modules = attention(model)
    before = [{k: v.clone() for k, v in m.named_parameters()} for m in modules]
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    out = model.embed(torch.rand(4, 1, 256, 32) * -80.0)
    # pull items 0 and 1 together, push 0 and 2 apart: a contrastive-like objective
    loss = -(out[0] * out[1]).sum() + (out[0] * out[2]).sum()
    loss.backward()
    for module in modules:
        for name, param in module.named_parameters():
            assert param.grad is not None and param.grad.abs().sum() > 0, name
    optimiser.step()
    for module, old in zip(modules, before, strict=True):
        for name, param in module.named_parameters():
            assert not torch.equal(param, old[name]), name


def test_the_mask_modulates_the_output(monkeypatch: pytest.MonkeyPatch) -> None:
    model = resnet_sta(0.25)
    feats = torch.rand(2, 1, 256, 32) * -80.0
    masks: list[torch.Tensor] = []
    original = SpectroTemporalAttention.mask

    def recording(self: SpectroTemporalAttention, x: torch.Tensor) -> torch.Tensor:
        mask = original(self, x)
        masks.append(mask)
        return mask

    with torch.inference_mode():
        monkeypatch.setattr(SpectroTemporalAttention, "mask", recording)
        with_mask = model.embed(feats)
        for name, constant in (("ones", torch.ones_like), ("zeros", torch.zeros_like)):
            monkeypatch.setattr(SpectroTemporalAttention, "mask", lambda s, x, c=constant: c(x))
            without = model.embed(feats)
            assert (with_mask - without).abs().max() > 1e-3, name
    assert len(masks) == 7
    for mask in masks:
        assert mask.min() > 0 and mask.max() < 1
        # varies over frequency and over time within each channel, not just one gain
        assert mask.std(dim=2).mean() > 1e-3
        if mask.shape[3] > 1:
            assert mask.std(dim=3).mean() > 1e-3


def test_attention_terms_follow_the_design() -> None:
    att = SpectroTemporalAttention(channels=2, kernel=3)
    x = torch.zeros(1, 2, 5, 6)
    x[0, :, 2, 3] = 1.0  # one peak per channel
    with torch.no_grad():
        for conv in (att.freq_conv, att.time_conv):
            assert conv.bias is not None
            conv.weight.zero_()
            conv.bias.zero_()
        # peak term alone: 0.5 at the local maximum, less in its 3 x 3 neighbourhood
        att.peak_gain.fill_(4.0)
        mask = att.mask(x)
        assert mask[0, 0, 2, 3] == pytest.approx(0.5)
        assert mask[0, 0, 1, 3] == pytest.approx(1 / (1 + math.exp(4.0)))
        assert mask[0, 0, 0, 0] == pytest.approx(0.5)  # outside it: 0 - max(0) = 0
        # frequency term alone, reading each row's max over time: varies along F only
        att.peak_gain.zero_()
        att.freq_conv.weight[:, 1, 1] = 3.0  # (out C, in 2 per group: mean, max, kernel)
        mask = att.mask(x)
        assert mask[0, 0, 2].unique().numel() == 1  # constant along time
        assert mask[0, 0, 2, 0] > mask[0, 0, 0, 0]
        # time term alone, reading each frame's mean over frequency: varies along T only
        att.freq_conv.weight.zero_()
        att.time_conv.weight[:, 0, 1] = 5.0
        mask = att.mask(x)
        assert mask[0, 1, :, 3].unique().numel() == 1
        assert mask[0, 1, 0, 3] > mask[0, 1, 0, 0]
        torch.testing.assert_close(att(x), x * mask)


def test_group_norm_groups_of_sixteen_channels() -> None:
    assert group_norm(1024).num_groups == 64
    assert group_norm(16).num_groups == 1
    assert group_norm(8).num_groups == 1
    assert group_norm(48).num_groups == 3
    assert group_norm(40).num_groups == 2  # 40 // 16 = 2 divides 40


def test_quarter_width_builds_and_is_cpu_sized() -> None:
    model = resnet_sta(0.25)
    assert model.backbone.channels == (16, 32, 64, 128, 256)
    assert count_parameters(model) < 1.5e6
    spec = ModelSpec.from_dict(model.spec.to_dict())
    assert spec == model.spec
    rebuilt = build_model(spec, seed=0)
    assert count_parameters(rebuilt) == count_parameters(model)


def test_custom_stages_build() -> None:
    arch = ResNetSTAConfig(width=1.0, channels=(8, 16, 128), blocks=(1, 1, 2), attention_kernel=5)
    model = build_model(ModelSpec("resnet_sta", arch=arch), seed=0).eval()
    assert len(attention(model)) == 4
    assert attention(model)[0].kernel == 5
    with torch.inference_mode():
        assert model(waves(2)).shape == (2, 128)


@pytest.mark.parametrize(
    ("arch", "key"),
    [
        ({"width": 0.0}, "arch.width"),
        ({"width": -1.0}, "arch.width"),
        ({"width": float("nan")}, "arch.width"),
        ({"channels": []}, "arch.channels"),
        ({"channels": [64, 0]}, "arch.channels"),
        ({"blocks": [1, 1]}, "arch.blocks"),
        ({"blocks": [1, 1, 0, 1, 1]}, "arch.blocks"),
        ({"attention_kernel": 4}, "arch.attention_kernel"),
        ({"attention_kernel": 0}, "arch.attention_kernel"),
        ({"dim": 0}, "arch.dim"),
        ({"proj_hidden": -3}, "arch.proj_hidden"),
        ({"depth": 3}, "model.arch.depth"),
        ({"blocks": "two"}, "model.arch.blocks"),
    ],
)
def test_bad_config_is_a_one_line_error_naming_the_key(arch: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        ModelSpec.from_dict({"name": "resnet_sta", "arch": arch})
    message = str(info.value)
    assert key in message and "\n" not in message


def test_width_giving_indivisible_features_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"arch\.width.*not divisible by arch\.dim=128"):
        build_model(ModelSpec("resnet_sta", arch=ResNetSTAConfig(width=0.3)))


def test_nafp_config_is_refused_for_resnet_sta() -> None:
    from afp_core.config import NAFPConfig

    with pytest.raises(ConfigError, match="needs a ResNetSTAConfig"):
        ModelSpec("resnet_sta", arch=NAFPConfig())
    assert dataclasses.asdict(ResNetSTAConfig())["blocks"] == (2, 2, 1, 1, 1)


# --- the CPU-sized training config --------------------------------------------------


def test_small_cpu_config_parses_and_its_model_builds() -> None:
    from afp_core.training.config import REPO_ROOT, load_train_config

    config = load_train_config(REPO_ROOT / "configs" / "resnet-sta-small-cpu.yaml")
    assert config.model.name == "resnet_sta"
    assert config.model.arch == ResNetSTAConfig(width=0.25)
    assert config.training.device == "cpu" and config.training.batch_size == 32
    assert config.augmentation.pipeline == "proposed"
    model = build_model(config.model, seed=0).eval()
    assert 1.0e6 < count_parameters(model) < 1.5e6
    with torch.inference_mode():
        out = model(waves(2))
    assert out.shape == (2, 128)


def test_trains_end_to_end_and_checkpoint_names_its_front_end(tmp_path) -> None:
    from afp_core.checkpoint import load_checkpoint
    from afp_core.training.data import prepare_training_data
    from afp_core.training.trainer import MODEL_FILE, Trainer
    from tests.training_fixtures import make_tiny_dataset, tiny_config

    paths = make_tiny_dataset(tmp_path / "tiny", songs=6)
    config = tiny_config(paths, tmp_path / "run", epochs=1, steps_per_epoch=2, batch_size=4)
    arch = ResNetSTAConfig(width=0.125)
    config = dataclasses.replace(config, model=ModelSpec("resnet_sta", arch=arch))
    trainer = Trainer(config, out=tmp_path / "run", quiet=True, data=prepare_training_data(config))
    start = build_model(config.model, seed=config.training.seed).state_dict()  # as the trainer
    result = trainer.run()
    assert result.steps == 2
    checkpoint = load_checkpoint(tmp_path / "run" / MODEL_FILE)
    assert checkpoint.spec == config.model
    assert checkpoint.meta["frontend"]["name"] == "log-mel 256 x 32"
    trained = checkpoint.model.state_dict()
    changed = [k for k in start if "attention" in k and not torch.equal(start[k], trained[k])]
    assert changed  # the attention parameters were trained
