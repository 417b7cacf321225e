"""The BEATs encoder: official state_dict layout, official checkpoints, freezing, training."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from afp_core.checkpoint import load_checkpoint, save_checkpoint
from afp_core.config import BEATsConfig, KaldiFbankConfig, LogMelConfig, NAFPConfig
from afp_core.errors import CheckpointError, ConfigError
from afp_core.models import (
    BEATsEncoder,
    ModelSpec,
    build_model,
    count_parameters,
    get_model_entry,
    initialise_from_beats,
    initialise_model,
    load_beats_checkpoint,
)
from afp_core.models.beats import RelativeSelfAttention, relative_position_buckets
from afp_core.training.config import REPO_ROOT, load_train_config
from afp_core.training.data import prepare_training_data
from afp_core.training.loss import nt_xent
from afp_core.training.optim import Lamb
from afp_core.training.trainer import MODEL_FILE, Trainer
from tests.training_fixtures import make_tiny_dataset, tiny_config

# Small enough to build in milliseconds; every size differs from the default.
SMALL = BEATsConfig(
    dim=16,
    proj_hidden=8,
    layers=2,
    embed_dim=64,
    heads=4,
    ffn_dim=128,
    conv_dim=32,
    conv_pos=16,
    conv_pos_groups=4,
    num_buckets=32,
    max_distance=64,
)
INPUT = (128, 98)  # the 8 kHz fbank of a 1 s window
FULL_ENCODER_PARAMETERS = 90_311_792
CONFIGS = REPO_ROOT / "configs"


def small_model(seed: int = 0, **arch: Any) -> Any:
    return build_model(ModelSpec("beats", arch=dataclasses.replace(SMALL, **arch)), seed=seed)


def waves(n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(n, 8000, generator=gen)


def official_shapes(
    layers: int = 12,
    c: int = 768,
    heads: int = 12,
    ffn: int = 3072,
    conv: int = 512,
    patch: int = 16,
    kernel: int = 128,
    groups: int = 16,
    buckets: int = 320,
) -> dict[str, tuple[int, ...]]:
    """The official BEATs state_dict: every key and shape (the fine-tuned one adds predictor.*)."""
    shapes: dict[str, tuple[int, ...]] = {
        "patch_embedding.weight": (conv, 1, patch, patch),
        "layer_norm.weight": (conv,),
        "layer_norm.bias": (conv,),
        "post_extract_proj.weight": (c, conv),
        "post_extract_proj.bias": (c,),
        "encoder.pos_conv.0.weight_g": (1, 1, kernel),
        "encoder.pos_conv.0.weight_v": (c, c // groups, kernel),
        "encoder.pos_conv.0.bias": (c,),
        "encoder.layer_norm.weight": (c,),
        "encoder.layer_norm.bias": (c,),
    }
    for i in range(layers):
        p = f"encoder.layers.{i}."
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            shapes[f"{p}self_attn.{proj}.weight"] = (c, c)
            shapes[f"{p}self_attn.{proj}.bias"] = (c,)
        shapes[f"{p}self_attn.relative_attention_bias.weight"] = (buckets, heads)
        shapes[f"{p}self_attn.grep_linear.weight"] = (8, c // heads)
        shapes[f"{p}self_attn.grep_linear.bias"] = (8,)
        shapes[f"{p}self_attn.grep_a"] = (1, heads, 1, 1)
        for norm in ("self_attn_layer_norm", "final_layer_norm"):
            shapes[f"{p}{norm}.weight"] = (c,)
            shapes[f"{p}{norm}.bias"] = (c,)
        shapes[f"{p}fc1.weight"] = (ffn, c)
        shapes[f"{p}fc1.bias"] = (ffn,)
        shapes[f"{p}fc2.weight"] = (c, ffn)
        shapes[f"{p}fc2.bias"] = (c,)
    return shapes


def official_cfg(arch: BEATsConfig, finetuned: bool = False) -> dict[str, Any]:
    """A cfg as the official checkpoints store it (BEATs_iter3+ settings, ``arch``'s sizes)."""
    return {
        "input_patch_size": arch.patch,
        "embed_dim": arch.conv_dim,
        "conv_bias": False,
        "encoder_layers": arch.layers,
        "encoder_embed_dim": arch.embed_dim,
        "encoder_ffn_embed_dim": arch.ffn_dim,
        "encoder_attention_heads": arch.heads,
        "activation_fn": "gelu",
        "layer_wise_gradient_decay_ratio": 0.6,
        "layer_norm_first": False,
        "deep_norm": True,
        "dropout": 0.0,
        "attention_dropout": 0.0,
        "activation_dropout": 0.0,
        "encoder_layerdrop": 0.05,
        "dropout_input": 0.0,
        "conv_pos": arch.conv_pos,
        "conv_pos_groups": arch.conv_pos_groups,
        "relative_position_embedding": True,
        "num_buckets": arch.num_buckets,
        "max_distance": arch.max_distance,
        "gru_rel_pos": True,
        "finetuned_model": finetuned,
        "predictor_dropout": 0.0,
        "predictor_class": 527,
    }


def write_official(
    path: Path,
    arch: BEATsConfig = SMALL,
    finetuned: bool = False,
    seed: int = 1,
    cfg: dict[str, Any] | None = None,
    drop: tuple[str, ...] = (),
) -> dict[str, torch.Tensor]:
    """An official-format checkpoint with random weights; returns its state_dict.

    Every tensor is perturbed, so none equals a freshly built model's (LayerNorm ones...).
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = BEATsEncoder(arch, INPUT)
    state = {
        k: v.detach().clone() + 0.05 * torch.randn(v.shape, generator=gen)
        for k, v in encoder.state_dict().items()
    }
    table = "encoder.layers.0.self_attn.relative_attention_bias.weight"
    for key in state:  # one shared table, as in the official files
        if key.endswith("relative_attention_bias.weight"):
            state[key] = state[table]
    if finetuned:
        state["predictor.weight"] = torch.randn(527, arch.embed_dim, generator=gen)
        state["predictor.bias"] = torch.randn(527, generator=gen)
    for key in drop:
        del state[key]
    torch.save({"cfg": cfg or official_cfg(arch, finetuned), "model": state}, path)
    return state


# --- architecture ---------------------------------------------------------------------------


def test_full_size_matches_the_official_state_dict_and_parameter_count() -> None:
    model = build_model(ModelSpec("beats"), seed=0)
    ours = {k: tuple(v.shape) for k, v in model.backbone.state_dict().items()}
    assert ours == official_shapes()
    total = count_parameters(model)
    encoder = count_parameters(model.backbone)
    print(f"BEATs full size: {total:,} parameters (encoder {encoder:,})")
    assert encoder == FULL_ENCODER_PARAMETERS
    assert count_parameters(model.head) == 128 * (6 * 32 + 32 + 32 + 1)
    assert abs(total - 90e6) / 90e6 < 0.01  # the paper's "approximately 90 million"
    assert count_parameters(model.frontend) == 0
    assert model.backbone.grid == (6, 8) and model.backbone.n_tokens == 48
    assert get_model_entry("beats").frontend_name == "kaldi fbank 128 x 98"


def test_small_state_dict_follows_the_official_layout() -> None:
    model = small_model()
    ours = {k: tuple(v.shape) for k, v in model.backbone.state_dict().items()}
    assert ours == official_shapes(2, 64, 4, 128, 32, 16, 16, 4, 32)
    # no projection when conv_dim == embed_dim, as in BEATs
    same = small_model(conv_dim=64).backbone.state_dict()
    assert not any(k.startswith("post_extract_proj") for k in same)


def test_forward_shapes_unit_norm_and_batch_independence() -> None:
    model = small_model().eval()
    x = waves(3)
    with torch.inference_mode():
        feats = model.features(x)
        tokens = model.backbone.tokens(feats)
        pooled = model.backbone(feats)
        out = model(x)
        alone = model(x[1:2])
    assert feats.shape == (3, 1, 128, 98)
    assert tokens.shape == (3, 48, 64)
    torch.testing.assert_close(pooled, tokens.mean(dim=1))
    assert out.shape == (3, 16)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(alone, out[1:2], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="BEATsEncoder expects"):
        model.backbone(torch.zeros(1, 1, 98, 128))


def test_patch_tokens_are_time_major_over_a_time_by_frequency_grid() -> None:
    encoder = BEATsEncoder(SMALL, INPUT).eval()
    encoder.encoder = nn.Identity()  # type: ignore[assignment]  # the embedded patches only
    features = torch.randn(1, 1, *INPUT)
    bumped = features.clone()
    bumped[0, 0, 5 * 16 : 6 * 16, 2 * 16 : 3 * 16] += 1.0  # frequency patch 5, time patch 2
    with torch.no_grad():
        changed = (encoder.tokens(bumped) - encoder.tokens(features)).abs().sum(-1)[0]
    assert changed.nonzero().flatten().tolist() == [2 * 8 + 5]
    # frames beyond the last whole patch (96, 97) are not seen, as in BEATs
    tail = features.clone()
    tail[..., 96:] += 5.0
    with torch.no_grad():
        torch.testing.assert_close(encoder.tokens(tail), encoder.tokens(features))


def test_relative_position_buckets() -> None:
    buckets = relative_position_buckets(3, 3, 320, 800)
    # keys at or before the query: the distance; after it: 160 + the distance
    assert buckets.tolist() == [[0, 161, 162], [1, 0, 161], [2, 1, 0]]
    far = relative_position_buckets(1, 1001, 320, 800)[0]
    # exact up to 79, then log-spaced: 80 + floor(ln(d / 80) / ln(10) * 80), at most 159
    assert far[79].item() == 160 + 79
    assert far[160].item() == 160 + 80 + int(math.log(2) / math.log(10) * 80)
    assert far[800].item() == far[1000].item() == 160 + 159
    assert (far[1:].diff() >= 0).all()


def test_gated_relative_bias() -> None:
    table = nn.Embedding(8, 2)
    attn = RelativeSelfAttention(4, 2, 0.0, table, max_distance=16)
    with torch.no_grad():
        for proj in (attn.q_proj, attn.k_proj, attn.grep_linear):
            proj.weight.zero_()
            proj.bias.zero_()
        for proj in (attn.v_proj, attn.out_proj):
            proj.weight.copy_(torch.eye(4))
            proj.bias.zero_()
    x = torch.randn(1, 5, 4)
    bias = attn.position_bias(5)  # (heads, 5, 5)
    assert bias.shape == (2, 5, 5)
    with torch.no_grad():
        out = attn(x, bias)
        # zero queries: scores 0, both gate halves sigmoid(0) = 1/2, so the bias is scaled
        # by 1/2 * (1/2 * grep_a - 1) + 2 = 1.75 for grep_a = 1
        for head, a in enumerate((1.0, 3.0)):
            attn.grep_a[0, head] = a
        out3 = attn(x, bias)
    for result, gains in ((out, (1.75, 1.75)), (out3, (1.75, 2.25))):
        for head, gain in enumerate(gains):
            weights = torch.softmax(gain * bias[head], dim=-1)
            expected = weights @ x[0, :, 2 * head : 2 * head + 2]
            torch.testing.assert_close(result[0, :, 2 * head : 2 * head + 2], expected)


def test_one_table_shared_by_all_layers() -> None:
    encoder = BEATsEncoder(SMALL, INPUT)
    tables = {
        id(layer.self_attn.relative_attention_bias.weight) for layer in encoder.encoder._layers()
    }
    assert len(tables) == 1
    assert count_parameters(encoder) == sum(
        p.numel() for p in {id(p): p for p in encoder.parameters()}.values()
    )


def test_layer_grad_decay_scales_gradients_below_each_layer() -> None:
    grads = []
    for decay in (1.0, 0.5):
        model = small_model(seed=3, layer_grad_decay=decay)
        model(waves(2)).sum().backward()
        grads.append(model.backbone.patch_embedding.weight.grad)
    torch.testing.assert_close(grads[1], grads[0] * 0.5**SMALL.layers)


def test_layerdrop_in_training_only_and_every_parameter_gets_a_gradient() -> None:
    model = small_model(seed=4, layerdrop=0.9)
    x = waves(2)
    model.eval()
    with torch.no_grad():
        a, b = model(x), model(x)
    torch.testing.assert_close(a, b)
    model.train()
    torch.manual_seed(0)
    outs = [model(x) for _ in range(6)]
    assert any(not torch.allclose(o, a) for o in outs)
    outs[0].sum().backward()
    assert all(p.grad is not None for p in model.parameters())  # DDP needs that


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"arch\.heads"):
        BEATsConfig(embed_dim=100, heads=12)
    with pytest.raises(ConfigError, match=r"arch\.dim"):
        BEATsConfig(dim=100)
    with pytest.raises(ConfigError, match=r"arch\.max_distance"):
        BEATsConfig(num_buckets=320, max_distance=80)
    with pytest.raises(ConfigError, match=r"arch\.layerdrop"):
        BEATsConfig(layerdrop=1.0)
    with pytest.raises(ConfigError, match=r"arch\.patch"):
        build_model(ModelSpec("beats", arch=dataclasses.replace(SMALL, patch=128)))
    with pytest.raises(ConfigError, match=r"model\.arch: model 'beats' needs a BEATsConfig"):
        ModelSpec("beats", arch=NAFPConfig())
    with pytest.raises(ConfigError, match=r"model\.frontend: model 'beats' needs a KaldiFbank"):
        ModelSpec("beats", frontend=LogMelConfig())


# --- official checkpoints -------------------------------------------------------------------


def test_pretrained_checkpoint_loads_into_the_encoder(tmp_path: Path) -> None:
    path = tmp_path / "BEATs_iter3_plus_AS2M.pt"
    state = write_official(path)
    model = small_model(pretrained=str(path))
    before = model.head.state_dict()
    assert not torch.equal(model.backbone.patch_embedding.weight, state["patch_embedding.weight"])
    notes: list[str] = []
    initialise_model(model, notes.append)
    loaded = model.backbone.state_dict()
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key
    for key, value in model.head.state_dict().items():  # the head keeps its own weights
        assert torch.equal(value, before[key])
    assert len(notes) == 1 and "pre-trained BEATs" in notes[0] and str(path) in notes[0]
    assert "ignored" not in notes[0]


def test_finetuned_checkpoint_loads_and_reports_the_predictor(tmp_path: Path) -> None:
    path = tmp_path / "BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt2.pt"
    state = write_official(path, finetuned=True)
    checkpoint = load_beats_checkpoint(path)
    assert checkpoint.finetuned
    encoder = BEATsEncoder(SMALL, INPUT)
    ignored = initialise_from_beats(encoder, checkpoint)
    assert ignored == ["predictor.bias", "predictor.weight"]
    fc2 = encoder.encoder._layers()[1].fc2
    assert torch.equal(fc2.weight, state["encoder.layers.1.fc2.weight"])
    notes: list[str] = []
    model = small_model(pretrained=str(path))
    initialise_model(model, notes.append)
    assert "fine-tuned BEATs" in notes[0] and "predictor.bias, predictor.weight" in notes[0]


def test_a_table_stored_for_the_first_layer_only_is_shared(tmp_path: Path) -> None:
    path = tmp_path / "beats.pt"
    state = write_official(
        path, drop=("encoder.layers.1.self_attn.relative_attention_bias.weight",)
    )
    encoder = BEATsEncoder(SMALL, INPUT)
    initialise_from_beats(encoder, path)
    table = encoder.encoder._layers()[1].self_attn.relative_attention_bias.weight
    assert torch.equal(table, state["encoder.layers.0.self_attn.relative_attention_bias.weight"])


def test_missing_wrong_shape_and_wrong_cfg_are_one_line_errors(tmp_path: Path) -> None:
    encoder = BEATsEncoder(SMALL, INPUT)
    missing = tmp_path / "missing.pt"
    write_official(missing, drop=("encoder.layers.1.fc1.weight", "encoder.layer_norm.bias"))
    with pytest.raises(CheckpointError) as err:
        initialise_from_beats(encoder, missing)
    message = str(err.value)
    assert "\n" not in message and str(missing) in message
    assert "2 encoder weight(s) missing" in message and "encoder.layers.1.fc1.weight" in message

    sizes = tmp_path / "sizes.pt"
    write_official(sizes, arch=dataclasses.replace(SMALL, layers=3))
    with pytest.raises(CheckpointError, match=r"encoder_layers 3 vs arch\.layers 2") as err:
        initialise_from_beats(encoder, sizes)
    assert str(sizes) in str(err.value)

    old = tmp_path / "old.pt"
    write_official(old, cfg={**official_cfg(SMALL), "deep_norm": False})
    with pytest.raises(CheckpointError, match=r"deep_norm False \(this encoder needs True\)"):
        initialise_from_beats(encoder, old)

    shape = tmp_path / "shape.pt"
    state = write_official(shape)
    state["encoder.layers.0.fc1.bias"] = torch.zeros(7)
    torch.save({"cfg": official_cfg(SMALL), "model": state}, shape)
    with pytest.raises(CheckpointError, match=r"wrong shape.*fc1\.bias is \(7,\)"):
        initialise_from_beats(encoder, shape)


class _Foreign:
    pass


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        (b"not a torch file", "not a readable torch checkpoint"),
        ([1, 2, 3], "not an official BEATs checkpoint"),
        ({"model": {}}, "not an official BEATs checkpoint"),
        ({"cfg": {}, "model": {"a": 1}}, "'model' entry 'a' is not a named tensor"),
        ({"cfg": {}, "model": {"a": _Foreign()}}, "refused by weights-only loading"),
    ],
)
def test_unusable_files_are_checkpoint_errors(tmp_path: Path, content: Any, message: str) -> None:
    path = tmp_path / "beats.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(CheckpointError, match=message) as err:
        load_beats_checkpoint(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_building_never_reads_the_pretrained_file(tmp_path: Path) -> None:
    """An afp checkpoint of a transfer-learning model rebuilds where the BEATs file is absent."""
    absent = tmp_path / "elsewhere" / "BEATs_iter3_plus_AS2M.pt"
    model = small_model(pretrained=str(absent)).eval()
    with pytest.raises(CheckpointError, match="no such file"):
        initialise_model(model)
    saved = save_checkpoint(tmp_path / "model.pt", model)
    loaded = load_checkpoint(saved)
    assert isinstance(loaded.spec.arch, BEATsConfig)
    assert loaded.spec.arch.pretrained == str(absent)
    x = waves(2)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.model(x), model(x))
    assert ModelSpec.from_dict(model.spec.to_dict()) == model.spec


# --- freezing -------------------------------------------------------------------------------


def train_step(model: Any) -> None:
    """One contrastive step as the trainer takes it: LAMB over the trainable parameters."""
    optimizer = Lamb([p for p in model.parameters() if p.requires_grad], lr=0.01)
    model.train()
    x = waves(8, seed=5)
    z = model(torch.cat([x, x + 0.01 * waves(8, seed=6)]))
    nt_xent(z[:8], z[8:], 0.05).backward()
    optimizer.step()


@pytest.mark.parametrize("freeze", [True, False])
def test_freezing_trains_the_head_only(freeze: bool) -> None:
    model = small_model(seed=2, freeze_encoder=freeze, dropout=0.1, layerdrop=0.2)
    encoder = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    head = {k: v.clone() for k, v in model.head.state_dict().items()}
    model.train()
    assert model.head.training and model.backbone.training is not freeze
    assert all(p.requires_grad is not freeze for p in model.backbone.parameters())
    train_step(model)
    after = model.backbone.state_dict()
    assert all(torch.equal(after[k], v) for k, v in encoder.items()) is freeze
    assert not any(torch.equal(model.head.state_dict()[k], v) for k, v in head.items())
    if freeze:  # eval-mode encoder: no dropout or layerdrop, however the model is switched
        x = waves(2)
        with torch.no_grad():
            torch.testing.assert_close(
                model.backbone(model.features(x)), model.eval().backbone(model.features(x))
            )


# --- the trainer ----------------------------------------------------------------------------


def test_trainer_initialises_a_fresh_run_only_and_keeps_a_frozen_encoder(
    tmp_path: Path,
) -> None:
    official = tmp_path / "BEATs_iter3_plus_AS2M_finetuned.pt"
    state = write_official(official, finetuned=True)
    arch = dataclasses.replace(SMALL, pretrained=str(official), freeze_encoder=True)
    paths = make_tiny_dataset(tmp_path / "data", songs=6)
    config = tiny_config(
        paths, tmp_path / "run", batch_size=4, steps_per_epoch=1, epochs=2, val_windows=4
    )
    config = config.replace(model=ModelSpec("beats", arch=arch))
    data = prepare_training_data(config)
    notes: list[str] = []
    seeded_head = build_model(config.model, seed=config.training.seed).head.state_dict()

    def trainer() -> Trainer:
        return Trainer(config, quiet=True, on_note=notes.append, data=data)

    assert trainer().run(until_epoch=1).stopped == "paused"
    assert any("fine-tuned BEATs" in n and "predictor.bias" in n for n in notes)
    assert any(
        f"({count_parameters(build_model(config.model).head):,} trained)" in n for n in notes
    )
    official.unlink()  # resuming takes the weights from the run, never from that file
    result = trainer().run(resume=True)
    assert result.stopped == "finished" and result.steps == 2
    model = load_checkpoint(tmp_path / "run" / MODEL_FILE).model
    encoder = model.backbone.state_dict()
    for key in encoder:  # frozen: still the official weights after 2 steps
        assert torch.equal(encoder[key], state[key]), key
    changed = [not torch.equal(v, seeded_head[k]) for k, v in model.head.state_dict().items()]
    assert all(changed)


def test_missing_pretrained_file_stops_a_fresh_run_before_data_preparation(
    tmp_path: Path,
) -> None:
    arch = dataclasses.replace(SMALL, pretrained=str(tmp_path / "absent.pt"))
    config = load_train_config(CONFIGS / "beats-small-cpu.yaml").replace(
        model=ModelSpec("beats", arch=arch), output=str(tmp_path / "run")
    )
    # no data given: reaching the data preparation would fail differently (or take long)
    with pytest.raises(CheckpointError, match=r"absent\.pt: no such file"):
        Trainer(config, quiet=True, on_note=lambda text: None).run()


# --- the shipped configurations -------------------------------------------------------------


def test_small_cpu_config() -> None:
    config = load_train_config(CONFIGS / "beats-small-cpu.yaml")
    arch = config.model.arch
    assert config.model.name == "beats" and isinstance(arch, BEATsConfig)
    assert (arch.layers, arch.embed_dim, arch.heads, arch.ffn_dim) == (4, 384, 6, 1536)
    assert arch.pretrained is None and not arch.freeze_encoder
    assert config.training.device == "cpu" and config.augmentation.pipeline == "proposed"
    assert config.output == "runs/beats-small"
    model = build_model(config.model, seed=0)
    assert model.frontend.output_shape(config.model.audio.window) == (128, 98)
    assert 8e6 < count_parameters(model) < 9e6


def test_transfer_learning_config_has_the_papers_settings() -> None:
    config = load_train_config(CONFIGS / "beats-tl-paper.yaml")
    arch = config.model.arch
    assert isinstance(arch, BEATsConfig)
    assert arch.pretrained is not None and arch.pretrained.endswith(".pt")
    assert arch == BEATsConfig(layerdrop=0.05, layer_grad_decay=0.6, pretrained=arch.pretrained)
    assert config.model.frontend == KaldiFbankConfig()
    t = config.training
    assert 2 * t.batch_size == 512
    assert (t.epochs, t.lr, t.min_lr, t.temperature) == (120, 0.003, 1e-7, 0.05)
    assert config.augmentation.pipeline == "proposed"
