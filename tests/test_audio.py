"""afp_core.audio on real files written with soundfile (wav, flac, ogg, mp3)."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from afp_core.audio import (
    AUDIO_EXTENSIONS,
    AudioInfo,
    frame_windows,
    iter_audio_files,
    load_audio,
    probe_audio,
    resample,
    stream_audio,
    stream_windows,
    window_count,
    write_audio_atomic,
)
from afp_core.errors import AfpError, AudioError

SR_IN = 44100
SR = 8000

# (suffix, soundfile format, subtype); every one of these reads back through libsndfile.
FORMATS = [
    (".wav", "WAV", "PCM_16"),
    (".flac", "FLAC", "PCM_16"),
    (".ogg", "OGG", "VORBIS"),
    (".mp3", "MP3", "MPEG_LAYER_III"),
]


def tone(freq: float, seconds: float, sr: int, amp: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def spectrum_db(x: np.ndarray, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """Hann-windowed magnitude spectrum in dB (relative to its peak) and its frequencies."""
    mag = np.abs(np.fft.rfft(x.astype(np.float64) * np.hanning(len(x))))
    freqs = np.fft.rfftfreq(len(x), 1 / sr)
    return 20 * np.log10(np.maximum(mag, 1e-300) / mag.max()), freqs


def band_db(spec: np.ndarray, freqs: np.ndarray, f0: float, half_width: float = 10.0) -> float:
    return float(spec[np.abs(freqs - f0) <= half_width].max())


def write_or_skip(path: Path, x: np.ndarray, sr: int, fmt: str, subtype: str) -> None:
    if fmt not in sf.available_formats() or subtype not in sf.available_subtypes(fmt):
        pytest.skip(f"this libsndfile ({sf.__libsndfile_version__}) cannot write {fmt}/{subtype}")
    sf.write(path, x, sr, format=fmt, subtype=subtype)


def assert_user_error(exc: AfpError, path: Path) -> None:
    message = str(exc)
    assert isinstance(exc, AudioError)
    assert message.startswith(str(path) + ": "), message
    assert "\n" not in message and "Traceback" not in message, message


# --- probing and loading --------------------------------------------------------------


@pytest.mark.parametrize(("suffix", "fmt", "subtype"), FORMATS)
def test_load_stereo_44k_gives_8k_mono_with_same_tone(
    tmp_path: Path, suffix: str, fmt: str, subtype: str
) -> None:
    seconds = 3.0
    left, right = tone(440, seconds, SR_IN, 0.6), tone(440, seconds, SR_IN, 0.2)
    path = tmp_path / f"stereo{suffix}"
    write_or_skip(path, np.stack([left, right], axis=1), SR_IN, fmt, subtype)

    info = probe_audio(path)
    assert info == AudioInfo(path, SR_IN, 2, round(seconds * SR_IN), fmt)
    assert info.duration_s == pytest.approx(seconds)

    y = load_audio(path)
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(len(y) - seconds * SR) <= 2, len(y)
    middle = y[SR // 2 : -SR // 2]
    spec, freqs = spectrum_db(middle, SR)
    assert abs(freqs[np.argmax(spec)] - 440) < 0.5
    # Downmix is the mean of the channels: amplitude (0.6 + 0.2) / 2 = 0.4.
    rms = float(np.sqrt(np.mean(middle.astype(np.float64) ** 2)))
    assert rms == pytest.approx(0.4 / np.sqrt(2), rel=0.03)


def test_resampling_filters_out_what_would_alias(tmp_path: Path) -> None:
    # 6 kHz is above the 4 kHz Nyquist of 8 kHz audio; without a low-pass it folds to 2 kHz.
    x = tone(1000, 3.0, SR_IN) + tone(6000, 3.0, SR_IN)
    path = tmp_path / "alias.wav"
    sf.write(path, x, SR_IN, subtype="FLOAT")

    for y in (load_audio(path), resample(x, SR_IN, SR)):
        spec, freqs = spectrum_db(y[SR // 4 : -SR // 4], SR)
        assert band_db(spec, freqs, 1000) == pytest.approx(0.0, abs=0.1)
        # soxr HQ: measured -151 dB; 60 dB is the minimum asked, HQ gives far more.
        assert band_db(spec, freqs, 2000) < -100

    # The check can fail: linear interpolation (no anti-alias filter) leaves a strong alias.
    t_out = np.arange(3 * SR) / SR
    naive = np.interp(t_out, np.arange(len(x)) / SR_IN, x)
    spec, freqs = spectrum_db(naive[SR // 4 : -SR // 4], SR)
    assert band_db(spec, freqs, 2000) > -30  # measured -0.5 dB


def test_streaming_in_small_blocks_equals_loading_whole(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = (0.3 * rng.standard_normal((5 * SR_IN + 123, 2))).astype(np.float32)
    path = tmp_path / "noise.flac"
    sf.write(path, x, SR_IN, subtype="PCM_24")

    whole = load_audio(path)
    blocks = list(stream_audio(path, block_s=0.0137))  # 604 input frames per block
    # 366 reads; soxr holds back output until it has a filter length, so fewer blocks.
    assert len(blocks) > 50
    assert all(b.dtype == np.float32 and b.ndim == 1 and len(b) > 0 for b in blocks)
    streamed = np.concatenate(blocks)
    assert len(streamed) == len(whole)
    np.testing.assert_allclose(streamed, whole, rtol=0, atol=1e-6)

    # And both equal soxr's one-shot resampling of the whole decoded file.
    decoded = sf.read(path, dtype="float32")[0].mean(axis=1, dtype=np.float32)
    np.testing.assert_allclose(whole, resample(decoded, SR_IN, SR), rtol=0, atol=1e-6)
    assert abs(len(whole) - len(x) * SR / SR_IN) <= 1


def test_same_rate_is_not_resampled(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = (0.3 * rng.standard_normal((SR * 2 + 7, 3))).astype(np.float32)
    path = tmp_path / "three.wav"
    sf.write(path, x, SR, subtype="FLOAT")
    expected = x.mean(axis=1, dtype=np.float32)
    np.testing.assert_array_equal(load_audio(path), expected)
    np.testing.assert_array_equal(np.concatenate(list(stream_audio(path, block_s=0.1))), expected)
    np.testing.assert_array_equal(resample(expected, SR, SR), expected)


def test_long_file_streams_in_bounded_memory(tmp_path: Path) -> None:
    minutes = 20
    path = tmp_path / "long.wav"
    rng = np.random.default_rng(2)
    minute = (0.1 * rng.standard_normal((60 * SR_IN, 2))).astype(np.float32)
    with sf.SoundFile(path, "w", SR_IN, 2, subtype="PCM_16") as f:
        for _ in range(minutes):
            f.write(minute)
    del minute
    whole_source_f32 = minutes * 60 * SR_IN * 2 * 4  # 423 MB
    whole_output_f32 = minutes * 60 * SR * 4  # 38 MB

    tracemalloc.start()
    try:
        n = 0
        for block in stream_audio(path):
            n += len(block)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert abs(n - minutes * 60 * SR) <= 1
    # Measured about 16 MB with the default 30 s blocks.
    bound = 24 * 2**20
    assert peak < bound < whole_output_f32 < whole_source_f32, peak


# --- errors -----------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.wav"
    for call in (probe_audio, load_audio, stream_audio):
        with pytest.raises(AudioError) as info:
            call(path)  # stream_audio checks at once, before the first block
        assert_user_error(info.value, path)
        assert "no such file" in str(info.value)


def test_folder_is_not_an_audio_file(tmp_path: Path) -> None:
    with pytest.raises(AudioError) as info:
        probe_audio(tmp_path)
    assert_user_error(info.value, tmp_path)


def test_text_file_with_wav_suffix(tmp_path: Path) -> None:
    path = tmp_path / "notes.wav"
    path.write_text("this is not audio\nat all\n")
    for call in (probe_audio, load_audio):
        with pytest.raises(AudioError) as info:
            call(path)
        assert_user_error(info.value, path)
        assert "not an audio file" in str(info.value)


def test_text_file_named_mp3_is_not_audio_and_decoder_notes_go_to_the_log(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "notes.mp3"
    path.write_text("this is not audio\nat all\n")
    with caplog.at_level("DEBUG", logger="afp_core.audio"):
        for call in (probe_audio, load_audio):
            with pytest.raises(AudioError) as info:
                call(path)
            # libsndfile's own reason blames a missing file or a pipe
            assert str(info.value) == f"{path}: not an audio file the decoder recognises"
    assert capfd.readouterr().err == ""  # libmpg123 printed "Note: Illegal Audio-MPEG-Header"
    assert "Illegal Audio-MPEG-Header" in caplog.text


def test_truncated_header(tmp_path: Path) -> None:
    good = tmp_path / "good.wav"
    sf.write(good, tone(440, 1.0, SR), SR)
    path = tmp_path / "cut.wav"
    path.write_bytes(good.read_bytes()[:20])
    with pytest.raises(AudioError) as info:
        probe_audio(path)
    assert_user_error(info.value, path)


def test_decoding_error_mid_file(tmp_path: Path) -> None:
    good = tmp_path / "good.flac"
    sf.write(good, tone(440, 3.0, SR_IN), SR_IN)
    path = tmp_path / "cut.flac"
    data = good.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert probe_audio(path).frames == 3 * SR_IN  # the header is intact
    blocks = stream_audio(path, block_s=0.1)
    with pytest.raises(AudioError) as info:
        for _ in blocks:
            pass
    assert_user_error(info.value, path)
    assert "decoding failed after 1." in str(info.value)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), SR)
    for call in (probe_audio, load_audio):
        with pytest.raises(AudioError) as info:
            call(path)
        assert_user_error(info.value, path)
        assert "empty" in str(info.value)


def truncate_wav(tmp_path: Path, seconds: float, keep_s: float, suffix: str = ".wav") -> Path:
    """A real file whose header promises ``seconds`` but whose data stops at ``keep_s``."""
    whole = tmp_path / f"whole{suffix}"
    sf.write(whole, tone(440, seconds, SR), SR, subtype="PCM_16")
    path = tmp_path / f"cut{suffix}"
    data = whole.read_bytes()
    path.write_bytes(data[: len(data) - round((seconds - keep_s) * SR) * 2])
    return path


@pytest.mark.parametrize("suffix", [".wav", ".aiff"])
def test_truncated_file_is_decoded_as_far_as_it_goes_with_a_warning(
    tmp_path: Path, suffix: str
) -> None:
    path = truncate_wav(tmp_path, 40.0, 6.0, suffix)
    info = probe_audio(path)
    assert abs(info.duration_s - 6.0) < 0.01  # libsndfile reads what is there...
    assert info.header_frames is not None
    assert abs(info.header_frames / SR - 40.0) < 0.01  # ...and its log keeps the promise
    warnings: list[str] = []
    audio = np.concatenate(list(stream_audio(path, on_warning=warnings.append)))
    assert abs(len(audio) / SR - 6.0) < 0.01
    assert warnings == [f"{path}: truncated: the header says 40.0 s, the file holds 6.0 s"]


def test_whole_files_and_unknown_length_headers_give_no_warning(tmp_path: Path) -> None:
    whole = tmp_path / "whole.wav"
    sf.write(whole, tone(440, 3.0, SR), SR, subtype="PCM_16")
    # a streaming writer's header: sizes 0xFFFFFFFF until it knows the length
    streamed = tmp_path / "streamed.wav"
    data = bytearray(whole.read_bytes())
    data[4:8] = data[40:44] = b"\xff\xff\xff\xff"
    streamed.write_bytes(bytes(data))
    for path in (whole, streamed):
        assert probe_audio(path).header_frames is None
        warnings: list[str] = []
        assert sum(map(len, stream_audio(path, on_warning=warnings.append))) == 3 * SR
        assert warnings == []


# --- windows ----------------------------------------------------------------------------


def test_window_count() -> None:
    assert window_count(180 * SR, SR, SR // 2) == 359
    assert window_count(SR - 1, SR, SR // 2) == 0
    assert window_count(SR, SR, SR // 2) == 1
    assert window_count(SR + SR // 2 - 1, SR, SR // 2) == 1
    assert window_count(SR + SR // 2, SR, SR // 2) == 2
    assert window_count(0, SR, SR // 2) == 0
    with pytest.raises(ValueError):
        window_count(10, 0, 1)


def test_frame_windows_is_a_read_only_view() -> None:
    x = np.arange(20, dtype=np.float32)
    w = frame_windows(x, 8, 4)
    assert w.shape == (window_count(20, 8, 4), 8) == (4, 8)
    np.testing.assert_array_equal(w[1], np.arange(4, 12))
    np.testing.assert_array_equal(w[3], np.arange(12, 20))
    assert np.shares_memory(w, x)
    assert not w.flags.writeable
    assert frame_windows(x[:5], 8, 4).shape == (0, 8)


@pytest.mark.parametrize(
    ("window", "hop", "max_windows"),
    [(8000, 4000, 1024), (50, 20, 3), (16, 16, 2), (10, 25, 4), (7, 1, 5)],
)
def test_stream_windows_equals_frame_windows(window: int, hop: int, max_windows: int) -> None:
    rng = np.random.default_rng(window * 1000 + hop)
    for trial in range(20):
        sizes = rng.choice(
            [0, 1, window // 3 + 1, window - 1, window, window + 1, 3 * window + 5], 12
        )
        if trial == 0:
            sizes = np.zeros(5, dtype=int)  # nothing at all
        blocks = [rng.standard_normal(s).astype(np.float32) for s in sizes]
        whole = np.concatenate(blocks) if blocks else np.zeros(0, np.float32)
        expected = frame_windows(whole, window, hop)

        out = list(stream_windows(iter(blocks), window, hop, max_windows))
        for chunk in out:
            assert chunk.dtype == np.float32 and chunk.flags.c_contiguous
            assert 1 <= len(chunk) <= max_windows and chunk.shape[1] == window
            assert not any(np.shares_memory(chunk, b) for b in blocks)
        got = np.concatenate(out) if out else np.zeros((0, window), np.float32)
        np.testing.assert_array_equal(got, expected)


def test_stream_windows_of_a_real_stream(tmp_path: Path) -> None:
    path = tmp_path / "song.ogg"
    x = tone(440, 4.2, SR_IN) + tone(1300, 4.2, SR_IN, 0.2)
    sf.write(path, x, SR_IN, format="OGG", subtype="VORBIS")
    expected = frame_windows(load_audio(path), SR, SR // 2)
    got = np.concatenate(list(stream_windows(stream_audio(path, block_s=0.3), SR, SR // 2)))
    assert got.shape == (window_count(len(load_audio(path)), SR, SR // 2), SR) == (7, SR)
    np.testing.assert_array_equal(got, expected)


# --- files ------------------------------------------------------------------------------


def test_iter_audio_files_walks_sorts_and_skips_hidden(tmp_path: Path) -> None:
    root = tmp_path / "music"
    names = [
        "b.wav",
        "a.flac",
        "A.WAV",
        "notes.txt",
        ".hidden.wav",
        "sub/c.mp3",
        "sub/.x.ogg",
        "sub2/deep/e.ogg",
        ".cache/d.wav",
        "sub-x/f.opus",
    ]
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).touch()
    loose = tmp_path / "loose.txt"  # named directly: yielded whatever its suffix
    loose.touch()

    got = list(iter_audio_files([loose, str(root)]))
    assert got == [
        loose,
        root / "A.WAV",
        root / "a.flac",
        root / "b.wav",
        root / "sub" / "c.mp3",
        root / "sub-x" / "f.opus",
        root / "sub2" / "deep" / "e.ogg",
    ]
    assert all(isinstance(p, Path) for p in got)
    assert {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".au"} <= AUDIO_EXTENSIONS

    missing = tmp_path / "gone"
    with pytest.raises(AudioError) as info:
        list(iter_audio_files([root, missing]))
    assert_user_error(info.value, missing)


def test_write_audio_atomic(tmp_path: Path) -> None:
    x = tone(440, 1.0, SR)
    path = tmp_path / "out.flac"
    write_audio_atomic(path, x, SR)
    write_audio_atomic(path, 0.5 * x, SR, subtype="PCM_24")  # replaces the old one
    y, sr = sf.read(path, dtype="float32")
    assert sr == SR and sf.info(path).subtype == "PCM_24"
    np.testing.assert_allclose(y, 0.5 * x, atol=1e-6)
    assert [p.name for p in tmp_path.iterdir()] == ["out.flac"]  # no temporary left

    # A failed write leaves the old file as it was and no temporary behind.
    opus = tmp_path / "out.opus"
    write_audio_atomic(opus, x, SR)
    before = opus.read_bytes()
    with pytest.raises(AudioError) as info:
        write_audio_atomic(opus, tone(440, 1.0, SR_IN), SR_IN)  # Opus has no 44.1 kHz
    assert_user_error(info.value, opus)
    assert opus.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.flac", "out.opus"]

    with pytest.raises(AudioError) as info:
        write_audio_atomic(tmp_path / "out.xyz", x, SR)
    assert_user_error(info.value, tmp_path / "out.xyz")


def test_windows_in_a_query_length_is_one_rule_with_window_count():
    from afp_core.config import AudioConfig

    audio = AudioConfig()  # 1 s windows, 0.5 s hop, 8 kHz
    counts = {x: audio.windows_in(x) for x in (0.9, 1.0, 1.25, 1.5, 2.0, 2.49, 2.5, 15.0)}
    assert counts == {0.9: 0, 1.0: 1, 1.25: 1, 1.5: 2, 2.0: 3, 2.49: 3, 2.5: 4, 15.0: 29}
    for seconds, n in counts.items():
        assert n == window_count(round(seconds * 8000), audio.window, audio.hop)
