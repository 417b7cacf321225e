"""Audio devices through PortAudio (sounddevice), imported only when first needed.

``sounddevice`` loads the PortAudio library when it is imported and PortAudio reads the
list of devices once, when it is initialised. So nothing here imports it at module level
(the rest of the rig works on machines without PortAudio), ``load_sounddevice`` turns a
missing library into a ``DeviceError`` that says what to install, and
``list_devices(refresh=True)`` re-initialises PortAudio so that devices plugged in (or
virtual devices configured) since then appear. Re-initialising PortAudio invalidates
every open stream, so it is refused while a take or a meter holds one
(``hold_portaudio``).
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

from afp_core.errors import AfpError
from afp_core.fileutil import one_line

__all__ = [
    "Device",
    "DeviceError",
    "DeviceKind",
    "describe_portaudio_error",
    "find_device",
    "hold_portaudio",
    "list_devices",
    "load_sounddevice",
    "refresh_devices",
]

DeviceKind = Literal["input", "output"]

_INSTALL_HINT = "install it with: apt-get install libportaudio2"
_lock = threading.Lock()
_holders = 0


class DeviceError(AfpError):
    """An audio device is missing, cannot be opened or failed while in use."""


@dataclass(frozen=True)
class Device:
    """One PortAudio device as ``list_devices`` sees it."""

    index: int
    name: str
    hostapi: str
    max_input_channels: int
    max_output_channels: int
    default_samplerate: float

    def supports(self, kind: DeviceKind) -> bool:
        """True when the device has channels in that direction."""
        channels = self.max_input_channels if kind == "input" else self.max_output_channels
        return channels > 0

    def describe(self) -> str:
        """One line for lists and logs: index, name, host API and channels."""
        return (
            f"[{self.index}] {self.name} ({self.hostapi}, {self.max_input_channels} in, "
            f"{self.max_output_channels} out, {self.default_samplerate:g} Hz)"
        )


def load_sounddevice() -> ModuleType:
    """The ``sounddevice`` module; ``DeviceError`` when PortAudio itself is missing."""
    try:
        return importlib.import_module("sounddevice")
    except OSError as exc:  # sounddevice raises OSError('PortAudio library not found')
        raise DeviceError(f"PortAudio cannot be loaded ({exc}); {_INSTALL_HINT}") from None
    except ImportError as exc:
        raise DeviceError(
            f"the Python package sounddevice is missing ({exc}); pip install sounddevice"
        ) from None


@contextmanager
def hold_portaudio() -> Iterator[ModuleType]:
    """Keep PortAudio initialised (no refresh) while streams are open; yields sounddevice."""
    global _holders
    sd = load_sounddevice()
    with _lock:
        _holders += 1
    try:
        yield sd
    finally:
        with _lock:
            _holders -= 1


def refresh_devices() -> None:
    """Re-initialise PortAudio so that it reads the device list (and ALSA config) again."""
    sd = load_sounddevice()
    with _lock:
        if _holders:
            raise DeviceError(
                "cannot refresh the device list while a take or level meter is running; "
                "stop it first"
            )
        # sounddevice exposes no public re-initialisation; these are what it runs at
        # import and at exit.
        sd._terminate()
        sd._initialize()


def list_devices(refresh: bool = False) -> list[Device]:
    """Every device PortAudio knows, in its order; ``refresh`` re-reads the list first."""
    if refresh:
        refresh_devices()
    sd = load_sounddevice()
    try:
        raw = sd.query_devices()
        hostapis = [str(api["name"]) for api in sd.query_hostapis()]
    except sd.PortAudioError as exc:
        raise DeviceError(f"cannot list audio devices ({describe_portaudio_error(exc)})") from None
    return [_device(info, hostapis) for info in raw]


def _device(info: dict[str, Any], hostapis: list[str]) -> Device:
    api = int(info["hostapi"])
    return Device(
        index=int(info["index"]),
        name=str(info["name"]),
        hostapi=hostapis[api] if 0 <= api < len(hostapis) else str(api),
        max_input_channels=int(info["max_input_channels"]),
        max_output_channels=int(info["max_output_channels"]),
        default_samplerate=float(info["default_samplerate"]),
    )


def find_device(name_or_index: str | int, kind: DeviceKind, *, refresh: bool = False) -> Device:
    """The device named (exactly, case-insensitively, or by a unique part) or indexed.

    ``DeviceError`` naming what was asked and listing the devices of that kind when there
    is no such device, when a part of a name matches several, or when the device has no
    channels in that direction.
    """
    if kind not in ("input", "output"):
        raise ValueError(f"kind must be 'input' or 'output', got {kind!r}")
    devices = list_devices(refresh=refresh)
    usable = [d for d in devices if d.supports(kind)]
    available = ", ".join(repr(d.name) for d in usable) or "none"
    wanted = name_or_index
    if isinstance(wanted, str) and wanted.strip().isdigit():
        wanted = int(wanted.strip())
    if isinstance(wanted, int):
        matches = [d for d in devices if d.index == wanted]
    else:
        matches = (
            [d for d in devices if d.name == wanted]
            or [d for d in devices if d.name.casefold() == wanted.casefold()]
            or [d for d in devices if wanted.casefold() in d.name.casefold()]
        )
        if len(matches) > 1:
            usable_matches = [d for d in matches if d.supports(kind)]
            matches = usable_matches or matches
        if len(matches) > 1:
            names = ", ".join(repr(d.name) for d in matches)
            raise DeviceError(f"{kind} device {wanted!r} is ambiguous: it matches {names}")
    if not matches:
        raise DeviceError(f"no {kind} device {wanted!r}; available: {available}")
    device = matches[0]
    if not device.supports(kind):
        raise DeviceError(
            f"device {device.name!r} has no {kind} channels; {kind} devices: {available}"
        )
    return device


def describe_portaudio_error(exc: BaseException) -> str:
    """A PortAudio error on one line, without sounddevice's bracketed error code."""
    text = one_line(exc)
    if "[PaErrorCode" in text:
        text = text[: text.index("[PaErrorCode")].strip()
    return text.rstrip(".")
