"""Training data: splits, public-set layouts, caches, Algorithm 1 batches, loaders."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import soundfile as sf
import torch

import afp_core.training.data as data_module
from afp_core.errors import AfpError, AudioError, ConfigError
from afp_core.training.data import (
    BatchSpec,
    ContrastiveBatches,
    SongPool,
    decode_songs,
    excerpt_layout,
    find_air_irs,
    find_micirp,
    find_mit_irs,
    find_noise_clips,
    load_air_ir,
    load_fma,
    make_augmenter,
    make_loader,
    make_retrieval_set,
    prepare_clips,
    prepare_training_data,
    read_fma_tracks,
    songs_from_paths,
    split_items,
)
from tests.conftest import synthesise_song
from tests.training_fixtures import SR, make_tiny_dataset, tiny_config, write_songs


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def prepared(tiny, tmp_path_factory):
    config = tiny_config(tiny, tmp_path_factory.mktemp("out"))
    return config, prepare_training_data(config)


# --- splits ------------------------------------------------------------------------------------


def test_split_is_by_item_seeded_and_order_independent() -> None:
    items = [f"song{i:03d}" for i in range(50)]
    split = split_items(items, 0.2, 0.1, seed=4)
    assert split.counts() == {"train": 35, "validation": 10, "test": 5}
    assert set(split.train) | set(split.validation) | set(split.test) == set(items)
    assert not set(split.train) & set(split.validation)
    assert not set(split.train) & set(split.test)
    assert split_items(items[::-1], 0.2, 0.1, seed=4) == split
    assert split_items(items, 0.2, 0.1, seed=5) != split
    small = split_items(["a", "b", "c"], 0.1, 0.1, seed=0)
    assert small.counts() == {"train": 1, "validation": 1, "test": 1}


def test_songs_split_by_song_key(tmp_path: Path) -> None:
    write_songs(tmp_path / "a", 4, duration_s=2.0)
    songs = songs_from_paths([tmp_path / "a"])
    split = split_items(songs, 0.25, 0.25, 0, key=lambda s: s.key)
    assert len(split.train) == 2 and len(split.validation) == 1 and len(split.test) == 1
    assert songs[0].title == "song00"


# --- public-set layouts ------------------------------------------------------------------------

TRACKS_CSV = """\
,album,album,artist,artist,track,track,track
,id,title,id,name,genre_top,number,title
track_id,,,,,,,
2,1,AWOL - A Way Of Life,1,AWOL,Hip-Hop,3,Food
5,1,"Album, with comma",1,AWOL,Hip-Hop,4,"This World, Again"
1234,7,"Multi
line album",9,Someone,Rock,1,Line Break Song
"""


def test_fma_layout_with_tracks_csv(tmp_path: Path) -> None:
    root = tmp_path / "fma_full"
    for rel in ("000/000002.mp3", "000/000005.mp3", "001/001234.mp3", "001/001999.mp3"):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, synthesise_song(int(path.stem), 2.5, SR), SR)
    (root / "README.txt").write_text("not audio")
    meta = tmp_path / "fma_metadata" / "tracks.csv"
    meta.parent.mkdir()
    meta.write_text(TRACKS_CSV, encoding="utf-8")
    tracks = read_fma_tracks(meta)
    assert tracks[2] == ("Food", "AWOL")
    assert tracks[5] == ("This World, Again", "AWOL")
    assert tracks[1234] == ("Line Break Song", "Someone")
    songs = load_fma(root, meta)
    assert [s.key for s in songs] == ["fma:2", "fma:5", "fma:1234", "fma:1999"]
    assert [s.title for s in songs] == ["Food", "This World, Again", "Line Break Song", "001999"]
    decoded = decode_songs(songs[:1], tmp_path / "cache", SR)
    assert decoded[0].load().dtype == np.int16
    assert decoded[0].samples == pytest.approx(2.5 * SR, abs=1200)  # mp3 adds padding
    with pytest.raises(AfpError, match="no FMA audio files"):
        load_fma(tmp_path / "fma_metadata")
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\nc,d\n")
    with pytest.raises(AfpError, match="no track/title column"):
        read_fma_tracks(bad)


def test_noise_folder_of_clips(tmp_path: Path) -> None:
    folder = tmp_path / "audioset_noise"
    (folder / "sub").mkdir(parents=True)
    sf.write(folder / "dog.flac", 0.1 * np.random.default_rng(0).standard_normal(44100), 44100)
    sf.write(
        folder / "sub" / "rain.wav", 0.1 * np.random.default_rng(1).standard_normal(16000), 16000
    )
    (folder / "broken.wav").write_bytes(b"RIFF....not really a wav")
    sf.write(folder / "silence.wav", np.zeros(8000), 8000)
    files = find_noise_clips(folder)
    assert [f.name for f in files] == ["broken.wav", "dog.flac", "silence.wav", "rain.wav"]
    notes: list[str] = []
    prepared = prepare_clips(files, tmp_path / "cache", "noise", SR, on_note=notes.append)
    assert len(prepared) == 2
    for path in prepared:
        info = sf.info(path)
        assert info.samplerate == SR and info.channels == 1
    assert any("broken.wav" in n for n in notes) and any("silence.wav" in n for n in notes)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AudioError, match="empty: no noise clips found"):
        find_noise_clips(empty)


def write_ir(path: Path, rate: int, delay: int = 40) -> None:
    ir = np.zeros(rate // 4)
    ir[delay] = 1.0
    ir[delay + 1 :] = 0.02 * np.random.default_rng(delay).standard_normal(len(ir) - delay - 1)
    ir[delay + 1 :] *= np.exp(-np.arange(len(ir) - delay - 1) / (0.05 * rate))
    sf.write(path, ir, rate, subtype="FLOAT")


def test_micirp_and_mit_folders(tmp_path: Path) -> None:
    mic = tmp_path / "MicIRP"
    mit = tmp_path / "MIT_IR_Survey" / "Audio"
    mic.mkdir()
    mit.mkdir(parents=True)
    for i in range(3):
        write_ir(mic / f"Vintage Mic {i}.wav", 44100)
        write_ir(mit / f"h{i:03d}_Room_{i}txts.wav", 32000, delay=100 + i)
    (mic / "notes.txt").write_text("x")
    assert len(find_micirp(mic)) == 3
    assert len(find_mit_irs(tmp_path / "MIT_IR_Survey")) == 3
    prepared = prepare_clips(find_mit_irs(mit), tmp_path / "cache", "ir", SR)
    ir, rate = sf.read(prepared[0], dtype="float32")
    assert rate == SR and sf.info(prepared[0]).subtype == "FLOAT"
    assert np.max(np.abs(ir)) == pytest.approx(1.0, abs=1e-6)
    assert int(np.argmax(np.abs(ir))) <= SR // 1000 + 2  # trimmed to ~1 ms before the peak
    empty = tmp_path / "no_irs"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    with pytest.raises(AudioError, match="no_irs: no MicIRP WAV files found"):
        find_micirp(empty)


def test_air_mat_files(tmp_path: Path) -> None:
    folder = tmp_path / "AIR_1_4"
    folder.mkdir()
    h = np.zeros(4800)
    h[96] = 1.0
    h[97:] = 0.1 * np.exp(-np.arange(4703) / 800.0)
    scipy.io.savemat(
        folder / "air_binaural_booth_0_0_1.mat", {"h_air": h[None, :], "air_info": {"fs": 48000}}
    )
    scipy.io.savemat(folder / "no_info.mat", {"h_air": h[None, :]})
    scipy.io.savemat(folder / "other.mat", {"x": np.ones(3)})
    files = find_air_irs(folder)
    assert len(files) == 3
    ir, rate = load_air_ir(files[0])
    assert rate == 48000 and ir.shape == (4800,) and ir[96] == 1.0
    assert load_air_ir(files[1])[1] == 48000
    with pytest.raises(AudioError, match="no 'h_air'"):
        load_air_ir(files[2])
    notes: list[str] = []
    prepared = prepare_clips(files, tmp_path / "cache", "ir", SR, on_note=notes.append)
    assert len(prepared) == 2 and any("other.mat" in n for n in notes)
    ir8, rate8 = sf.read(prepared[0], dtype="float32")
    assert rate8 == SR and len(ir8) < 800


def test_unreadable_noise_or_ir_folder_is_named(tiny: dict[str, Path], tmp_path: Path) -> None:
    junk = tmp_path / "junk_noise"
    junk.mkdir()
    (junk / "a.wav").write_bytes(b"garbage")
    config = tiny_config(tiny, tmp_path / "out")
    bad_noise = dataclasses.replace(config.data, noise=(str(junk),))
    with pytest.raises(AudioError, match="junk_noise: no readable noise clips"):
        prepare_training_data(dataclasses.replace(config, data=bad_noise))
    bad_irs = dataclasses.replace(config.data, room_irs=(str(junk),))
    with pytest.raises(AudioError, match="junk_noise: no readable impulse responses"):
        prepare_training_data(dataclasses.replace(config, data=bad_irs))


def test_fewer_songs_than_n_is_a_config_error(tiny: dict[str, Path], tmp_path: Path) -> None:
    config = tiny_config(tiny, tmp_path / "out", batch_size=11)
    with pytest.raises(ConfigError, match=r"training\.batch_size: .*N=11.* only 10 training"):
        prepare_training_data(config)
    # repeat_songs lifts the limit (the data is prepared; batches repeat songs, below).
    repeating = tiny_config(tiny, tmp_path / "out", batch_size=11, repeat_songs=True)
    assert len(prepare_training_data(repeating).songs.train) == 10


# --- decoding cache ------------------------------------------------------------------------


def test_decode_cache_is_keyed_by_checksum(tmp_path: Path, monkeypatch) -> None:
    paths = write_songs(tmp_path / "songs", 2, duration_s=2.0)
    copy = tmp_path / "songs" / "copy.wav"
    copy.write_bytes(paths[0].read_bytes())
    songs = songs_from_paths([tmp_path / "songs"])
    decoded = decode_songs(songs, tmp_path / "cache", SR)
    assert len(decoded) == 3
    assert decoded[0].cache == decoded[1].cache  # copy.wav and song00.wav: one cache file

    def refuse(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(data_module, "load_audio", refuse)
    again = decode_songs(songs, tmp_path / "cache", SR)
    assert [d.cache for d in again] == [d.cache for d in decoded]
    reference = sf.read(paths[1], dtype="float32")[0]
    np.testing.assert_allclose(again[2].load() / 32768.0, reference, atol=1.0 / 32768)


def test_too_short_songs_are_left_out_with_a_note(tmp_path: Path) -> None:
    write_songs(tmp_path / "s", 1, duration_s=1.0)
    notes: list[str] = []
    decoded = decode_songs(
        songs_from_paths([tmp_path / "s"]),
        tmp_path / "c",
        SR,
        min_samples=14000,
        on_note=notes.append,
    )
    assert decoded == [] and "shorter than a training excerpt" in notes[0]


# --- Algorithm 1 batches -----------------------------------------------------------------------


def make_dataset(config, data, steps: int = 6) -> ContrastiveBatches:
    excerpt, offset = excerpt_layout(config.augmentation, SR, 8000)
    pool = SongPool(data.songs.train, excerpt, offset, 8000, config.data.energy_floor)
    spec = BatchSpec(n=8, sample_rate=SR, window=8000, n_freq=256, n_time=32)
    return ContrastiveBatches(
        pool,
        config.augmentation,
        spec,
        steps,
        seed=3,
        noise_files=data.noise.train,
        room_ir_files=data.room_irs.train,
        mic_ir_files=data.mic_irs.train,
    )


def test_prepared_data_describes_itself(prepared) -> None:
    _, data = prepared
    d = data.describe()
    assert d["songs"] == {"train": 10, "validation": 2, "test": 0}
    assert (
        d["noise_clips"]["train"] + d["noise_clips"]["validation"] + d["noise_clips"]["test"] == 8
    )  # 6 clips + 2 synthetic
    assert d["room_irs"] == {"train": 4, "validation": 1, "test": 0}
    assert len(d["train_checksums_sha256"]) == 64


def test_batches_hold_n_different_loud_songs(prepared) -> None:
    config, data = prepared
    dataset = make_dataset(config, data)
    batch = dataset.make_batch(epoch=0, step=0)
    assert batch["anchors"].shape == (8, 8000) and batch["positives"].shape == (8, 8000)
    assert len(set(batch["songs"].tolist())) == 8
    energy = (batch["anchors"].double() ** 2).sum(dim=1)
    assert (energy > config.data.energy_floor).all()
    assert not torch.equal(batch["anchors"], batch["positives"])
    again = dataset.make_batch(epoch=0, step=0)
    assert torch.equal(batch["positives"], again["positives"])
    assert not torch.equal(batch["anchors"], dataset.make_batch(epoch=1, step=0)["anchors"])


def test_repeat_songs_fills_a_batch_larger_than_the_songs(prepared) -> None:
    config, data = prepared
    excerpt, offset = excerpt_layout(config.augmentation, SR, 8000)
    pool = SongPool(data.songs.train, excerpt, offset, 8000, config.data.energy_floor)
    # Up to the number of songs, repeat_songs draws exactly what the distinct draw does.
    for n in (4, 10):
        plain = pool.draw(n, np.random.default_rng(7))
        repeated = pool.draw(n, np.random.default_rng(7), repeat=True)
        for a, b in zip(plain, repeated, strict=True):
            np.testing.assert_array_equal(a, b)
    excerpts, songs, starts = pool.draw(25, np.random.default_rng(7), repeat=True)
    assert excerpts.shape == (25, excerpt)
    assert set(songs[:10].tolist()) == set(range(10))  # every song once, then repeats
    assert len(set(zip(songs.tolist(), starts.tolist(), strict=True))) > 20
    with pytest.raises(AfpError, match="a batch needs 25 different songs"):
        pool.draw(25, np.random.default_rng(7))


def test_quiet_windows_are_drawn_again(prepared) -> None:
    config, data = prepared
    excerpt, offset = excerpt_layout(config.augmentation, SR, 8000)
    pool = SongPool(data.songs.train, excerpt, offset, 8000, energy_floor=1.0)
    # Silence all of song 0 except its first second and a half: few loud positions.
    audio = [np.array(a) for a in pool.audio]
    audio[0][12000:] = 0
    audio[1][:] = 0  # song 1 has no loud window at all
    pool._audio = audio
    for seed in range(10):
        excerpts, songs, _ = pool.draw(8, np.random.default_rng(seed))
        assert 1 not in songs.tolist()
        anchors = excerpts[:, offset : offset + 8000].astype(np.float64)
        assert ((anchors**2).sum(axis=1) > 1.0).all()
    for i in range(2, 10):
        audio[i][:] = 0
    with pytest.raises(AfpError, match="only 1 songs have windows above the energy floor"):
        pool.draw(8, np.random.default_rng(0))


def test_loader_is_deterministic_with_any_number_of_workers(prepared) -> None:
    config, data = prepared
    dataset = make_dataset(config, data, steps=4)
    single = [b["positives"] for b in make_loader(dataset, 0, epoch=2)]
    multi = list(make_loader(dataset, 2, epoch=2))
    assert [b["step"] for b in multi] == [0, 1, 2, 3]
    assert all(torch.equal(a, b["positives"]) for a, b in zip(single, multi, strict=True))
    resumed = [b["positives"] for b in make_loader(dataset, 0, epoch=2, start_step=2)]
    assert all(torch.equal(a, b) for a, b in zip(single[2:], resumed, strict=True))


def test_masks_on_about_a_third_of_the_batches(prepared) -> None:
    config, data = prepared
    # Without noise, IRs and filters a batch costs little: enough of them for a share.
    dataset = make_dataset(
        config, dataclasses.replace(data, noise=data.noise, room_irs=data.room_irs)
    )
    dataset.noise_files = dataset.room_ir_files = dataset.mic_ir_files = ()
    dataset.augment = dataclasses.replace(config.augmentation, filter_p=0.0)
    masks = [dataset.make_batch(0, step)["masks"] for step in range(240)]
    masked = [bool(m[:, [1, 3]].any()) for m in masks]
    assert np.mean(masked) == pytest.approx(1 / 3, abs=0.07)
    widths = torch.stack([m for m, on in zip(masks, masked, strict=True) if on])
    assert widths[..., 1].max() <= 25 and widths[..., 3].max() <= 3


def test_retrieval_set(prepared) -> None:
    config, data = prepared
    excerpt, offset = excerpt_layout(config.augmentation, SR, 8000)
    pool = SongPool(data.songs.validation, excerpt, offset, 8000)
    spec = BatchSpec(n=2, sample_rate=SR, window=8000, n_freq=256, n_time=32)
    augmenter = make_augmenter(config.augmentation, spec, data.noise.validation, (), ())
    retrieval = make_retrieval_set(pool, augmenter, 6, seed=0)
    assert retrieval.clean.shape == retrieval.queries.shape == retrieval.shifted.shape
    assert retrieval.clean.shape == (6, 8000)
    assert not np.array_equal(retrieval.queries, retrieval.shifted)


def test_train_only_songs_join_the_training_split_only(tiny, tmp_path: Path) -> None:
    config = tiny_config(tiny, tmp_path / "out")
    before = prepare_training_data(config).songs
    held_out = before.validation[0].ref.path.stem
    extra = tmp_path / "extra"
    write_songs(extra, 2, first_seed=900)
    write_songs(tmp_path / "same-name", 1, first_seed=950)[0].rename(extra / f"{held_out}.wav")
    config = dataclasses.replace(
        config, data=dataclasses.replace(config.data, train_only_songs=(str(extra),))
    )
    notes: list[str] = []
    after = prepare_training_data(config, on_note=notes.append)
    assert [s.ref for s in after.songs.validation] == [s.ref for s in before.validation]
    assert [s.ref for s in after.songs.test] == [s.ref for s in before.test]
    added = {s.ref.path for s in after.songs.train} - {s.ref.path for s in before.train}
    assert {p.name for p in added} == {"song00.wav", "song01.wav"}
    assert all(p.parent == extra for p in added)
    assert any(f"{held_out}.wav: left out of training" in note for note in notes)
