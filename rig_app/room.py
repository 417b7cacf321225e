"""A virtual room: the acoustic path of the paper's protocol (§3) without a lab.

The paper plays the music on a laptop's own speakers, the noise program on a Bluetooth
speaker at three distances, and records the laptop's microphone: ``low`` (noise speaker
far, least distorted), ``mid``, ``high`` (close, most distorted). ``VirtualRoom``
describes such a setup; the music program goes through

    small-speaker response -> room impulse response (speaker to microphone) -> microphone,

and the noise program through the noise speaker's response -> the room impulse response
from its place at the take's distance -> the same microphone. Room impulse responses come
from pyroomacoustics' image-source method in a shoebox room (or, for the music path, from
an impulse response measured by the rig, ``measured_ir``). Everything is linear and
deterministic, so a take made through the room still aligns to the program exactly: the
markers survive the room (the noise program is silent around them) and the alignment
measures the delay of the path like any other.

Two ways to use it:

* live (``rig_app.jobs.TakeSettings.room``, ``afp-rig record --virtual-room``):
  ``live_take_audio`` makes what each source contributes at the microphone
  (``render_paths``); the rig plays the music part on the music output and the noise part
  on the noise output, and the virtual devices' loopbacks sum them into the virtual
  microphone, so the take goes through real PortAudio streams with real latency and drift;
* offline (``simulated_take_audio``, ``afp-rig simulate``): the mix as the microphone
  would record it, with a start offset, a clock drift and a little self-noise.

Either way the take carries a note (``take_note``) holding the room and the
music-to-noise ratio at the microphone; ``room_from_notes`` reads it back. The jobs that
make a session's takes through a room and store them are in ``rig_app.jobs``
(``record_or_simulate_takes``, ``simulate_session_take``).

Levels: the microphone's gain is set so that the music speaker's direct sound arrives at
the program's level (the room adds its reverberation on top); the noise speaker plays its
program ``noise_gain_db`` louder than the music speaker plays the music. Both paths are
then scaled down together where needed so that their sum cannot pass
``peak_ceiling_db`` however the two are shifted against each other.
"""

from __future__ import annotations

import functools
import json
import math
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import soxr
from scipy import fft as sfft
from scipy import signal

from afp_core.audio import load_audio, write_audio_atomic
from afp_core.augment import overdrive
from afp_core.errors import AfpError
from afp_core.fileutil import atomic_write_text, check_document, read_json_object

__all__ = [
    "ROOM_FORMAT",
    "ROOM_VERSION",
    "RoomError",
    "SimulatedTake",
    "VirtualRoom",
    "convolve_blocks",
    "find_take_room",
    "live_take_audio",
    "microphone_ir",
    "music_to_noise_db",
    "noise_speaker_ir",
    "path_responses",
    "render_paths",
    "room_from_notes",
    "room_impulse_responses",
    "simulate_take",
    "simulated_take_audio",
    "speaker_ir",
    "take_note",
    "write_channel_ir",
]

ROOM_FORMAT = "afp-rig-virtual-room"
ROOM_VERSION = 1
SPEED_OF_SOUND = 343.0  # m/s, pyroomacoustics' default
NOTE_TAG = "virtual-room "

_BLOCK = 1 << 18  # samples per FFT block: memory stays bounded for hours of program
_RESPONSE_S = 0.1  # length of the speaker/microphone impulse responses before trimming
_MAX_IR_S = 2.0
_MARGIN_M = 0.05  # sources and microphone keep this far from the walls
_PATTERNS = ("omni", "subcardioid", "cardioid", "hypercardioid")
_pra_lock = threading.Lock()  # pyroomacoustics' random generator is package-global


class RoomError(AfpError):
    """A virtual room cannot be used as described; the message names the problem."""


def _triple(value: Any, name: str) -> tuple[float, float, float]:
    try:
        items = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise RoomError(f"virtual room: {name} must be three numbers, got {value!r}") from None
    if len(items) != 3:
        raise RoomError(f"virtual room: {name} must be three numbers, got {value!r}")
    return items


def _pair(value: Any, name: str) -> tuple[float, float]:
    try:
        items = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise RoomError(f"virtual room: {name} must be two numbers, got {value!r}") from None
    if len(items) != 2 or not 0.0 < items[0] < items[1]:
        raise RoomError(f"virtual room: {name} must be two increasing frequencies, got {value!r}")
    return items


@dataclass(frozen=True)
class VirtualRoom:
    """A laptop on a desk in a shoebox room, and a noise speaker at a distance per take.

    Positions are metres from one corner of the room (x, y, z). The noise speaker of a take
    stands ``noise_distances_m[label]`` away from the microphone, in the direction
    ``noise_azimuth_deg`` (0: along +x), at ``noise_height_m``. ``absorption`` is the
    energy absorption coefficient of every surface (its Sabine RT60 is ``rt60_s``);
    ``max_order`` None uses the image order that covers that RT60. Both speakers face the
    microphone with the polar pattern ``speaker_pattern`` (``omni``, ``subcardioid``,
    ``cardioid``, ``hypercardioid``; the same at every frequency): a speaker that beams at
    the laptop excites less of the room. ``image_jitter_m`` > 0
    uses pyroomacoustics' randomised image-source method (seeded with ``seed``), which
    breaks a shoebox's sweeping echoes but moves the direct path by up to that much too.
    ``measured_ir``: a WAV file holding the music path's impulse response (speaker, room
    and microphone together, e.g. from ``write_channel_ir``) used instead of the simulated
    one; the noise path is still simulated. ``speaker_drive_db``: the music speaker is
    overdriven, the program's peak that many dB into a soft clipper
    (``afp_core.augment.overdrive``); None: a clean speaker.
    """

    size_m: tuple[float, float, float] = (6.0, 5.0, 2.7)
    absorption: float = 0.4
    max_order: int | None = None
    mic_m: tuple[float, float, float] = (1.5, 2.2, 1.0)
    music_speaker_m: tuple[float, float, float] = (1.5, 2.0, 0.8)
    noise_distances_m: tuple[tuple[str, float], ...] = (("low", 3.0), ("mid", 1.5), ("high", 0.5))
    noise_azimuth_deg: float = 20.0
    noise_height_m: float = 1.0
    noise_gain_db: float = 0.0
    speaker_band_hz: tuple[float, float] = (150.0, 8000.0)
    speaker_resonance_hz: float = 900.0
    speaker_resonance_db: float = 4.0
    speaker_resonance_q: float = 2.0
    noise_speaker_band_hz: tuple[float, float] = (70.0, 16000.0)
    mic_highpass_hz: float = 100.0
    mic_presence_hz: float = 4000.0
    mic_presence_db: float = 4.0
    mic_lowpass_hz: float = 11000.0
    measured_ir: str | None = None
    speaker_pattern: str = "cardioid"
    image_jitter_m: float = 0.0
    peak_ceiling_db: float = -1.0
    speaker_drive_db: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        put = object.__setattr__
        put(self, "size_m", _triple(self.size_m, "size_m"))
        put(self, "mic_m", _triple(self.mic_m, "mic_m"))
        put(self, "music_speaker_m", _triple(self.music_speaker_m, "music_speaker_m"))
        put(self, "speaker_band_hz", _pair(self.speaker_band_hz, "speaker_band_hz"))
        band = _pair(self.noise_speaker_band_hz, "noise_speaker_band_hz")
        put(self, "noise_speaker_band_hz", band)
        distances = self.noise_distances_m
        if isinstance(distances, dict):
            distances = tuple(distances.items())
        try:
            pairs = tuple((str(label), float(d)) for label, d in distances)
        except (TypeError, ValueError):
            raise RoomError(
                f"virtual room: noise_distances_m must map take labels to metres, got {distances!r}"
            ) from None
        put(self, "noise_distances_m", pairs)
        if not pairs:
            raise RoomError("virtual room: noise_distances_m is empty (give low, mid, high)")
        if min(self.size_m) <= 2 * _MARGIN_M:
            raise RoomError(f"virtual room: size_m {self.size_m} is too small")
        if not 0.0 < self.absorption <= 1.0:
            raise RoomError(f"virtual room: absorption must be in (0, 1], got {self.absorption}")
        if self.max_order is not None and self.max_order < 0:
            raise RoomError(f"virtual room: max_order must not be negative, got {self.max_order}")
        if self.speaker_pattern not in _PATTERNS:
            raise RoomError(
                f"virtual room: speaker_pattern {self.speaker_pattern!r} is not one of "
                f"{', '.join(_PATTERNS)}"
            )
        if self.image_jitter_m < 0:
            raise RoomError("virtual room: image_jitter_m must not be negative")
        if self.speaker_drive_db is not None and not self.speaker_drive_db >= 0:
            raise RoomError("virtual room: speaker_drive_db must be at least 0 dB")
        if self.peak_ceiling_db > 0:
            raise RoomError("virtual room: peak_ceiling_db must be at most 0 dBFS")
        for name, f in (
            ("speaker_resonance_hz", self.speaker_resonance_hz),
            ("mic_highpass_hz", self.mic_highpass_hz),
            ("mic_presence_hz", self.mic_presence_hz),
            ("mic_lowpass_hz", self.mic_lowpass_hz),
        ):
            if not f > 0:
                raise RoomError(f"virtual room: {name} must be positive, got {f}")
        if self.speaker_resonance_q <= 0:
            raise RoomError("virtual room: speaker_resonance_q must be positive")
        self._check_inside("mic_m", self.mic_m)
        self._check_inside("music_speaker_m", self.music_speaker_m)
        if self.music_distance_m < 0.05:
            raise RoomError("virtual room: the music speaker sits on the microphone")
        for label, distance in pairs:
            if distance < 0.1:
                raise RoomError(
                    f"virtual room: noise distance for '{label}' must be at least 0.1 m, "
                    f"got {distance}"
                )
            self._check_inside(f"the noise speaker of '{label}'", self.noise_position(label))

    def _check_inside(self, name: str, point: Sequence[float]) -> None:
        for axis, (value, size) in enumerate(zip(point, self.size_m, strict=True)):
            if not _MARGIN_M <= value <= size - _MARGIN_M:
                raise RoomError(
                    f"virtual room: {name} at {tuple(round(p, 3) for p in point)} m is outside "
                    f"the {'xyz'[axis]} range of a {self.size_m} m room"
                )

    # --- geometry -------------------------------------------------------------------------

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(label for label, _ in self.noise_distances_m)

    @property
    def music_distance_m(self) -> float:
        return float(np.linalg.norm(np.subtract(self.music_speaker_m, self.mic_m)))

    @property
    def rt60_s(self) -> float:
        """Sabine's reverberation time of the room."""
        x, y, z = self.size_m
        surface = 2.0 * (x * y + x * z + y * z)
        return 0.161 * x * y * z / (self.absorption * surface)

    def noise_distance(self, label: str) -> float:
        for name, distance in self.noise_distances_m:
            if name == label:
                return distance
        raise RoomError(
            f"virtual room: no noise distance for take '{label}' (it has: {', '.join(self.labels)})"
        )

    def noise_position(self, label: str) -> tuple[float, float, float]:
        distance = self.noise_distance(label)
        azimuth = math.radians(self.noise_azimuth_deg)
        mx, my, mz = self.mic_m
        dz = self.noise_height_m - mz
        flat = math.sqrt(max(distance**2 - dz**2, 0.0))
        return (mx + flat * math.cos(azimuth), my + flat * math.sin(azimuth), mz + dz)

    def with_noise_distance(self, label: str, distance_m: float) -> VirtualRoom:
        """The same room with the noise speaker of ``label`` at ``distance_m``."""
        pairs = [(name, d) for name, d in self.noise_distances_m if name != label]
        return replace(self, noise_distances_m=(*pairs, (label, float(distance_m))))

    def describe(self, label: str | None = None) -> str:
        """One line: the room and, for a take, where its noise speaker stands."""
        x, y, z = self.size_m
        text = (
            f"{x:g} x {y:g} x {z:g} m room, absorption {self.absorption:g} "
            f"(RT60 {self.rt60_s:.2f} s), laptop speaker {self.music_distance_m:.2f} m "
            f"from the microphone"
        )
        if self.measured_ir:
            text += f", music path measured ({Path(self.measured_ir).name})"
        if self.speaker_drive_db is not None:
            text += f", speaker overdriven by {self.speaker_drive_db:g} dB"
        if label is not None:
            text += f", noise speaker at {self.noise_distance(label):.2f} m"
        return text

    # --- files ----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["noise_distances_m"] = dict(self.noise_distances_m)
        for key, value in data.items():
            if isinstance(value, tuple):
                data[key] = list(value)
        return {"format": ROOM_FORMAT, "version": ROOM_VERSION, **data}

    @classmethod
    def from_dict(cls, data: Any, where: str = "virtual room") -> VirtualRoom:
        check_document(data, ROOM_FORMAT, ROOM_VERSION, where, RoomError)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - {"format", "version"})
        if unknown:
            raise RoomError(f"{where}: unknown key {unknown[0]!r}")
        values = {key: data[key] for key in known if key in data}
        try:
            return cls(**values)
        except RoomError as exc:
            raise RoomError(f"{where}: {str(exc).removeprefix('virtual room: ')}") from None
        except (TypeError, ValueError) as exc:
            raise RoomError(f"{where}: {' '.join(str(exc).split())}") from None

    @classmethod
    def load(cls, path: Path | str) -> VirtualRoom:
        """Read a room file; a relative ``measured_ir`` is relative to the file."""
        path = Path(path)
        data = read_json_object(path, RoomError)
        measured = data.get("measured_ir")
        if isinstance(measured, str) and measured and not Path(measured).is_absolute():
            data["measured_ir"] = str(path.parent / measured)
        return cls.from_dict(data, where=str(path))

    def save(self, path: Path | str) -> Path:
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")


# --- transducer responses -----------------------------------------------------------------


def _peaking_sos(f0: float, gain_db: float, q: float, rate: int) -> np.ndarray:
    """A peaking biquad (constant-Q bell; the usual audio-EQ design) as one SOS row."""
    a = 10.0 ** (gain_db / 40.0)
    w0 = 2.0 * math.pi * f0 / rate
    alpha = math.sin(w0) / (2.0 * q)
    b = np.array([1.0 + alpha * a, -2.0 * math.cos(w0), 1.0 - alpha * a])
    den = np.array([1.0 + alpha / a, -2.0 * math.cos(w0), 1.0 - alpha / a])
    return np.concatenate([b / den[0], den / den[0]])[None, :]


def _band_sos(low: float | None, high: float | None, order: int, rate: int) -> list[np.ndarray]:
    nyquist = 0.5 * rate
    parts = []
    if low is not None and low < 0.9 * nyquist:
        parts.append(signal.butter(order, low, "highpass", fs=rate, output="sos"))
    if high is not None and high < 0.9 * nyquist:
        parts.append(signal.butter(order, high, "lowpass", fs=rate, output="sos"))
    return parts


def _impulse_response(parts: list[np.ndarray], rate: int) -> np.ndarray:
    h = np.zeros(max(16, round(_RESPONSE_S * rate)))
    h[0] = 1.0
    if parts:
        h = signal.sosfilt(np.concatenate(parts), h)
    energy = np.cumsum(h[::-1] ** 2)[::-1]  # energy from each sample to the end
    keep = int(np.searchsorted(-energy, -1e-9 * energy[0])) + 1
    return h[: max(keep, 1)]


def speaker_ir(room: VirtualRoom, sample_rate: int) -> np.ndarray:
    """The laptop speaker: band-pass (4th-order edges) with a mild resonance."""
    low, high = room.speaker_band_hz
    parts = _band_sos(low, high, 4, sample_rate)
    if room.speaker_resonance_hz < 0.45 * sample_rate and room.speaker_resonance_db:
        parts.append(
            _peaking_sos(
                room.speaker_resonance_hz,
                room.speaker_resonance_db,
                room.speaker_resonance_q,
                sample_rate,
            )
        )
    return _impulse_response(parts, sample_rate)


def noise_speaker_ir(room: VirtualRoom, sample_rate: int) -> np.ndarray:
    """The noise (Bluetooth) speaker: a wider band-pass, 2nd-order edges."""
    low, high = room.noise_speaker_band_hz
    return _impulse_response(_band_sos(low, high, 2, sample_rate), sample_rate)


def microphone_ir(room: VirtualRoom, sample_rate: int) -> np.ndarray:
    """The laptop microphone: high-pass, a presence bump, a gentle high roll-off."""
    parts = _band_sos(room.mic_highpass_hz, room.mic_lowpass_hz, 2, sample_rate)
    if room.mic_presence_hz < 0.45 * sample_rate and room.mic_presence_db:
        parts.append(_peaking_sos(room.mic_presence_hz, room.mic_presence_db, 1.0, sample_rate))
    return _impulse_response(parts, sample_rate)


# --- room impulse responses ---------------------------------------------------------------


def _facing_mic(room: VirtualRoom, source: Sequence[float]) -> Any:
    """The speaker's directivity, pointing from ``source`` at the microphone (or None)."""
    if room.speaker_pattern == "omni":
        return None
    from pyroomacoustics import directivities

    x, y, z = np.subtract(room.mic_m, source)
    azimuth = math.degrees(math.atan2(y, x))
    colatitude = math.degrees(math.acos(z / math.sqrt(x * x + y * y + z * z)))
    pattern = {
        "subcardioid": directivities.SubCardioid,
        "cardioid": directivities.Cardioid,
        "hypercardioid": directivities.HyperCardioid,
    }[room.speaker_pattern]
    return pattern(directivities.DirectionVector(azimuth, colatitude, degrees=True))


def _pra_rir(room: VirtualRoom, rate: int, source: Sequence[float], seed: int) -> np.ndarray:
    import pyroomacoustics as pra

    order = room.max_order
    if order is None:
        try:
            _, order = pra.inverse_sabine(room.rt60_s, list(room.size_m), c=SPEED_OF_SOUND)
        except ValueError as exc:  # the room is too absorbent or too reverberant for Sabine
            raise RoomError(f"virtual room: {' '.join(str(exc).split())}") from None
    with _pra_lock:
        # Its zero-phase 10 Hz high-pass would put a slow wave before the direct sound;
        # the speakers and the microphone cut far higher anyway, causally.
        hpf = pra.constants.get("rir_hpf_enable")
        pra.constants.set("rir_hpf_enable", False)
        try:
            if room.image_jitter_m > 0:
                pra.random.seed(numpy=seed)
            shoebox = pra.ShoeBox(
                list(room.size_m),
                fs=rate,
                materials=pra.Material(room.absorption),
                max_order=int(order),
                use_rand_ism=room.image_jitter_m > 0,
                max_rand_disp=room.image_jitter_m,
            )
            shoebox.set_sound_speed(SPEED_OF_SOUND)
            shoebox.add_source(list(source), directivity=_facing_mic(room, source))
            shoebox.add_microphone(list(room.mic_m))
            shoebox.compute_rir()
        finally:
            pra.constants.set("rir_hpf_enable", hpf)
        rir = np.asarray(shoebox.rir[0][0], dtype=np.float64)
        delay = pra.constants.get("frac_delay_length") // 2
    # pyroomacoustics centres its fractional-delay filters: sample 0 becomes time 0 here
    rir = rir[delay:]
    return rir[: round(_MAX_IR_S * rate)]


@functools.lru_cache(maxsize=32)
def _cached_rirs(room: VirtualRoom, rate: int, label: str) -> tuple[np.ndarray, np.ndarray]:
    # pyroomacoustics' direct path has amplitude 1 / distance: the music's direct sound
    # is made unity (the microphone gain of the module docstring), the noise keeps its
    # level relative to it.
    scale = room.music_distance_m
    music = _pra_rir(room, rate, room.music_speaker_m, room.seed) * scale
    noise = _pra_rir(room, rate, room.noise_position(label), room.seed + 1) * scale
    for ir in (music, noise):
        ir.flags.writeable = False
    return music, noise


def room_impulse_responses(
    room: VirtualRoom, sample_rate: int, take_label: str
) -> tuple[np.ndarray, np.ndarray]:
    """Impulse responses of the room alone (image-source method), music and noise source
    to the microphone; sample 0 is time 0, the music's direct sound has amplitude 1.

    Cached per (room, rate, label): computing them takes a fraction of a second to a few
    seconds. The arrays are read-only.
    """
    room.noise_distance(take_label)  # says which labels there are
    return _cached_rirs(room, int(sample_rate), take_label)


def _measured_ir(path: str, rate: int) -> np.ndarray:
    try:
        ir = load_audio(path, rate).astype(np.float64)
    except AfpError as exc:
        raise RoomError(f"virtual room: measured_ir: {exc}") from None
    peak = float(np.max(np.abs(ir))) if len(ir) else 0.0
    if not peak > 0:
        raise RoomError(f"virtual room: measured_ir {path} is silent")
    return ir[: round(_MAX_IR_S * rate)] / peak


@functools.lru_cache(maxsize=32)
def _cached_paths(room: VirtualRoom, rate: int, label: str) -> tuple[np.ndarray, np.ndarray]:
    music_rir, noise_rir = _cached_rirs(room, rate, label)
    mic = microphone_ir(room, rate)
    if room.measured_ir:
        music = _measured_ir(room.measured_ir, rate)
    else:
        music = signal.fftconvolve(signal.fftconvolve(speaker_ir(room, rate), music_rir), mic)
    noise = signal.fftconvolve(signal.fftconvolve(noise_speaker_ir(room, rate), noise_rir), mic)
    noise *= 10.0 ** (room.noise_gain_db / 20.0)
    for ir in (music, noise):
        ir.flags.writeable = False
    return music, noise


def path_responses(
    room: VirtualRoom, sample_rate: int, take_label: str
) -> tuple[np.ndarray, np.ndarray]:
    """The whole paths as impulse responses (cached, read-only): speaker -> room ->
    microphone for the music, noise speaker -> room -> microphone for the noise (with
    ``noise_gain_db``), before the shared level adjustment of ``render_paths``."""
    room.noise_distance(take_label)
    return _cached_paths(room, int(sample_rate), take_label)


# --- rendering ----------------------------------------------------------------------------


def convolve_blocks(x: np.ndarray, h: np.ndarray, block: int = _BLOCK) -> np.ndarray:
    """``x`` convolved with ``h``, cut to ``len(x)`` (float32), by FFT overlap-add in blocks
    of ``block`` samples: memory stays a few blocks however long ``x`` is."""
    x = np.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"expected a mono signal, got shape {x.shape}")
    h = np.asarray(h, dtype=np.float64)
    n, m = len(x), len(h)
    out = np.zeros(n, dtype=np.float32)
    if not n or not m:
        return out
    nfft = sfft.next_fast_len(block + m - 1, real=True)
    spectrum = sfft.rfft(h, nfft)
    for start in range(0, n, block):
        piece = np.asarray(x[start : start + block], dtype=np.float64)
        y = sfft.irfft(sfft.rfft(piece, nfft) * spectrum, nfft)[: len(piece) + m - 1]
        stop = min(n, start + len(y))
        out[start:stop] += y[: stop - start].astype(np.float32)
    return out


def _peak(x: np.ndarray) -> float:
    peak = 0.0
    for start in range(0, len(x), _BLOCK):
        peak = max(peak, float(np.max(np.abs(x[start : start + _BLOCK]))))
    return peak


def render_paths(
    room: VirtualRoom,
    music: np.ndarray,
    noise: np.ndarray | None,
    sample_rate: int,
    label: str,
) -> tuple[np.ndarray, np.ndarray | None]:
    """What the music and the noise program each contribute at the microphone (float32,
    as long as the programs; the reverberation past the end is cut).

    Both are scaled by one gain where needed so that ``|music| + |noise|`` stays under
    ``room.peak_ceiling_db``: played on two outputs and summed at a microphone with any
    delay between them, the sum cannot clip. ``noise`` None: no noise (None back).
    """
    music = np.asarray(music, dtype=np.float32)
    if music.ndim != 1 or not len(music):
        raise RoomError(
            f"virtual room: the music must be a non-empty mono array, got {music.shape}"
        )
    if noise is not None:
        noise = np.asarray(noise, dtype=np.float32)
        if noise.shape != music.shape:
            raise RoomError(
                f"virtual room: music and noise differ in length ({len(music)} and "
                f"{len(noise)} samples)"
            )
    music_h, noise_h = path_responses(room, sample_rate, label)
    if room.speaker_drive_db is not None:
        peak = _peak(music)
        music = np.concatenate(
            [
                overdrive(music[start : start + _BLOCK], room.speaker_drive_db, peak)
                for start in range(0, len(music), _BLOCK)
            ]
        )
    music_at_mic = convolve_blocks(music, music_h)
    noise_at_mic = None if noise is None else convolve_blocks(noise, noise_h)
    total = _peak(music_at_mic) + (0.0 if noise_at_mic is None else _peak(noise_at_mic))
    ceiling = 10.0 ** (room.peak_ceiling_db / 20.0)
    if total > ceiling:
        gain = np.float32(ceiling / total)
        music_at_mic *= gain
        if noise_at_mic is not None:
            noise_at_mic *= gain
    return music_at_mic, noise_at_mic


def music_to_noise_db(
    music_at_mic: np.ndarray,
    noise_at_mic: np.ndarray | None,
    ranges: Sequence[tuple[int, int]] | None = None,
) -> float:
    """Music-to-noise energy ratio (dB) at the microphone over ``ranges`` of samples
    (e.g. the songs; default the whole program). +inf without noise."""
    if noise_at_mic is None:
        return math.inf
    spans = [(0, len(music_at_mic))] if ranges is None else list(ranges)
    music_energy = noise_energy = 0.0
    for start, end in spans:
        for lo in range(int(start), int(end), _BLOCK):
            hi = min(int(end), lo + _BLOCK)
            m = np.asarray(music_at_mic[lo:hi], dtype=np.float64)
            n = np.asarray(noise_at_mic[lo:hi], dtype=np.float64)
            music_energy += float(np.dot(m, m))
            noise_energy += float(np.dot(n, n))
    if noise_energy <= 0:
        return math.inf
    if music_energy <= 0:
        return -math.inf
    return 10.0 * math.log10(music_energy / noise_energy)


def _drift(x: np.ndarray, rate: int, drift_ppm: float) -> np.ndarray:
    """``x`` on a clock ``drift_ppm`` fast (more samples per second), in blocks."""
    if drift_ppm == 0:
        return x
    ratio = 1.0 + drift_ppm * 1e-6
    stream = soxr.ResampleStream(rate, rate * ratio, 1, dtype="float32", quality="VHQ")
    parts = []
    for start in range(0, len(x), _BLOCK):
        last = start + _BLOCK >= len(x)
        parts.append(stream.resample_chunk(x[start : start + _BLOCK], last=last))
    return np.concatenate(parts)


def simulate_take(
    room: VirtualRoom,
    music: np.ndarray,
    noise: np.ndarray | None,
    sample_rate: int,
    label: str,
    offset_s: float = 0.5,
    drift_ppm: float = 0.0,
    mic_noise_db: float = -75.0,
    seed: int | None = None,
    *,
    tail_s: float = 2.0,
) -> np.ndarray:
    """The take a microphone in ``room`` would record (float32 at ``sample_rate``).

    The mix of ``render_paths`` on a recorder clock ``drift_ppm`` fast (resampled by
    ``1 + drift_ppm * 1e-6``), after ``offset_s`` of silence (rounded to a whole sample)
    and followed by ``tail_s``, with white self-noise at ``mic_noise_db`` dBFS RMS
    (seeded with ``seed``, default ``room.seed``). Program time t lies at take time
    ``offset_s + (t + path delay) * (1 + drift_ppm * 1e-6)``; the path delay is the music
    speaker's distance over the speed of sound, plus the responses' small group delay.
    """
    made = simulated_take_audio(
        room,
        music,
        noise,
        sample_rate,
        label,
        offset_s=offset_s,
        drift_ppm=drift_ppm,
        mic_noise_db=mic_noise_db,
        seed=seed,
        tail_s=tail_s,
    )
    return made.audio


@dataclass
class SimulatedTake:
    """A take simulated through a room (``simulated_take_audio``), ready to store."""

    audio: np.ndarray  # float32, at the rate it was simulated at
    music_to_noise_db: float  # at the microphone, over the songs
    note: str  # the take's note (``take_note``)
    details: dict[str, Any]  # offset_s, drift_ppm, mic_noise_db, seed: what the note records


def simulated_take_audio(
    room: VirtualRoom,
    music: np.ndarray,
    noise: np.ndarray | None,
    sample_rate: int,
    label: str,
    song_ranges: Sequence[tuple[int, int]] | None = None,
    *,
    offset_s: float = 0.7,
    drift_ppm: float = 35.0,
    mic_noise_db: float = -75.0,
    seed: int | None = None,
    tail_s: float = 2.0,
) -> SimulatedTake:
    """An offline take through ``room`` (see ``simulate_take``) with its note: the
    music-to-noise ratio at the microphone over ``song_ranges`` (default: all of it) and
    the simulation's settings. Pass ``noise`` as the only reference to it: it is let go
    before the take is mixed, so hours of program need one track fewer in memory."""
    _check_take(offset_s, drift_ppm, tail_s)
    music_at_mic, noise_at_mic = render_paths(room, music, noise, sample_rate, label)
    del noise
    ratio = music_to_noise_db(music_at_mic, noise_at_mic, song_ranges)
    seed = room.seed if seed is None else seed
    audio = _record(
        music_at_mic, noise_at_mic, sample_rate, offset_s, drift_ppm, mic_noise_db, seed, tail_s
    )
    details = {
        "offset_s": round(offset_s * sample_rate) / sample_rate,
        "drift_ppm": drift_ppm,
        "mic_noise_db": mic_noise_db,
        "seed": seed,
    }
    note = take_note(room, label, "simulated", ratio, **details)
    return SimulatedTake(audio, ratio, note, details)


def _check_take(offset_s: float, drift_ppm: float, tail_s: float) -> None:
    if offset_s < 0 or tail_s < 0:
        raise RoomError("simulated take: offset_s and tail_s must not be negative")
    if abs(drift_ppm) >= 1e5:
        raise RoomError(f"simulated take: drift of {drift_ppm} ppm is not a clock drift")


def _record(
    music_at_mic: np.ndarray,
    noise_at_mic: np.ndarray | None,
    sample_rate: int,
    offset_s: float,
    drift_ppm: float,
    mic_noise_db: float,
    seed: int,
    tail_s: float,
) -> np.ndarray:
    """The microphone's recording of the rendered paths (``music_at_mic`` is reused)."""
    if noise_at_mic is not None:
        music_at_mic += noise_at_mic
        del noise_at_mic
    mix = _drift(music_at_mic, sample_rate, drift_ppm)
    del music_at_mic
    lead = round(offset_s * sample_rate)
    take = np.zeros(lead + len(mix) + round(tail_s * sample_rate), dtype=np.float32)
    take[lead : lead + len(mix)] = mix
    del mix
    rng = np.random.default_rng(seed)
    sigma = 10.0 ** (mic_noise_db / 20.0)
    for start in range(0, len(take), _BLOCK):
        piece = take[start : start + _BLOCK]
        piece += (sigma * rng.standard_normal(len(piece))).astype(np.float32)
    return take


# --- notes: how a take was made -----------------------------------------------------------


def take_note(
    room: VirtualRoom,
    label: str,
    mode: Literal["live", "simulated"],
    music_to_noise: float,
    **details: Any,
) -> str:
    """The note a take made through ``room`` carries: a sentence, then ``virtual-room``
    and a JSON object (the room, the take's details) that ``room_from_notes`` reads."""
    how = "live through the audio devices" if mode == "live" else "simulated offline"
    ratio = "no noise" if not math.isfinite(music_to_noise) else f"{music_to_noise:+.1f} dB"
    take = {
        "label": label,
        "mode": mode,
        "noise_distance_m": room.noise_distance(label),
        "music_to_noise_db": round(music_to_noise, 2) if math.isfinite(music_to_noise) else None,
        **details,
    }
    data = {**room.to_dict(), "take": take}
    return (
        f"virtual room, {how}: {room.describe(label)}; music-to-noise at the microphone "
        f"{ratio} | {NOTE_TAG}{json.dumps(data, separators=(',', ':'))}"
    )


def room_from_notes(notes: str) -> tuple[VirtualRoom, dict[str, Any]] | None:
    """The room and take details a take's notes hold (``take_note``); None if none."""
    at = notes.rfind(NOTE_TAG + "{")
    if at < 0:
        return None
    try:
        data, _ = json.JSONDecoder().raw_decode(notes[at + len(NOTE_TAG) :])
    except json.JSONDecodeError as exc:
        raise RoomError(f"take notes: virtual room record is not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise RoomError("take notes: virtual room record is not a JSON object")
    take = data.pop("take", {})
    return VirtualRoom.from_dict(data, where="take notes"), dict(take or {})


def find_take_room(notes: str) -> tuple[VirtualRoom, dict[str, Any]] | None:
    """``room_from_notes``, or None where the notes' room record cannot be read: the views
    that list takes (quality, Dataset page, export) still show such a take, without a room."""
    try:
        return room_from_notes(notes)
    except RoomError:
        return None


def live_take_audio(
    room: VirtualRoom,
    music: np.ndarray,
    noise: np.ndarray | None,
    sample_rate: int,
    label: str,
    song_ranges: Sequence[tuple[int, int]] | None = None,
) -> tuple[np.ndarray, np.ndarray | None, str]:
    """What to play for a live take through ``room``: the music and noise at the
    microphone (``render_paths``) and the take's note (``take_note``)."""
    music_at_mic, noise_at_mic = render_paths(room, music, noise, sample_rate, label)
    ratio = music_to_noise_db(music_at_mic, noise_at_mic, song_ranges)
    return music_at_mic, noise_at_mic, take_note(room, label, "live", ratio)


def write_channel_ir(channel: dict[str, Any], path: Path | str) -> Path:
    """Write an alignment's measured channel (``takes[].alignment.channel``) as a WAV a
    room's ``measured_ir`` can use. Measured from the markers, it only holds the sweep's
    band (about 300 Hz to 3.5 kHz): music through it loses the rest."""
    try:
        ir = np.asarray(channel["ir"], dtype=np.float32)
        rate = int(channel["sample_rate"])
    except (KeyError, TypeError, ValueError) as exc:
        raise RoomError(f"{path}: not a measured channel ({' '.join(str(exc).split())})") from None
    if not len(ir):
        raise RoomError(f"{path}: the measured channel has no impulse response")
    path = Path(path)
    write_audio_atomic(path, ir, rate, subtype="FLOAT")
    return path
