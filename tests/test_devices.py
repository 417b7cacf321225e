"""Device lookup, PortAudio loading and level checks on the virtual devices."""

from __future__ import annotations

import importlib
import threading
import time

import pytest

from rig_app import devices as devices_module
from rig_app.capture import InputMeter, play_test_tone
from rig_app.devices import (
    DeviceError,
    find_device,
    hold_portaudio,
    list_devices,
    load_sounddevice,
    refresh_devices,
)


def test_virtual_devices_are_listed_and_found(virtual_devices):
    names = [d.name for d in list_devices()]
    for name in ("music_out", "noise_out", "mic_in"):
        assert name in names
    mic = find_device("mic_in", "input")
    assert mic.name == "mic_in" and mic.max_input_channels >= 1
    assert find_device(mic.index, "input") == mic
    assert find_device(str(mic.index), "input") == mic
    assert find_device("MIC_IN", "input") == mic  # case-insensitive
    assert find_device("mic", "input") == mic  # a unique part of the name
    assert find_device("music", "output").name == "music_out"
    assert "music_out" in find_device("music_out", "output").describe()


def test_missing_device_is_a_one_line_error_listing_the_devices(virtual_devices):
    with pytest.raises(DeviceError) as info:
        find_device("usb-microphone-that-is-not-there", "input")
    message = str(info.value)
    assert "\n" not in message
    assert "usb-microphone-that-is-not-there" in message
    assert "'mic_in'" in message
    with pytest.raises(DeviceError, match="no output device 9999"):
        find_device(9999, "output")
    with pytest.raises(DeviceError, match="ambiguous"):
        find_device("_out", "output")


def test_missing_portaudio_says_what_to_install(monkeypatch):
    def no_portaudio(name: str):
        raise OSError("PortAudio library not found")

    monkeypatch.setattr(importlib, "import_module", no_portaudio)
    with pytest.raises(DeviceError, match=r"apt-get install libportaudio2") as info:
        devices_module.load_sounddevice()
    assert "\n" not in str(info.value)


def test_refresh_is_refused_while_a_stream_is_open():
    load_sounddevice()
    with hold_portaudio(), pytest.raises(DeviceError, match="while a take"):
        refresh_devices()
    refresh_devices()  # free again


def test_test_tone_reaches_the_input_meter(virtual_devices):
    levels: list[tuple[float, float]] = []
    with InputMeter(virtual_devices.mic_in, window_s=0.2) as meter:
        tone = threading.Thread(
            target=play_test_tone,
            args=(virtual_devices.music_out,),
            kwargs={"frequency": 1000.0, "seconds": 1.2, "level_dbfs": -20.0},
        )
        tone.start()
        while tone.is_alive():
            levels.append((meter.rms_dbfs, meter.peak_dbfs))
            time.sleep(0.05)
        tone.join()
    rms = max(level[0] for level in levels)
    peak = max(level[1] for level in levels)
    # a sine's RMS is 3 dB under its peak; the loopback passes it at unity gain
    assert rms == pytest.approx(-23.0, abs=1.5)
    assert peak == pytest.approx(-20.0, abs=1.5)


def test_virtual_devices_say_why_they_cannot_start(monkeypatch):
    import shutil

    from rig_app import virtual_devices as vd

    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(vd.VirtualDevicesError, match="apt-get install pulseaudio") as info:
        vd.start_virtual_devices()
    assert "\n" not in str(info.value)
