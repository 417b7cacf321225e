"""pytest plugin: virtual audio devices for the recording-rig tests.

Register it once (``pytest_plugins = ["tests.rig_fixtures"]`` in the root conftest.py).
``virtual_devices`` starts one PulseAudio daemon for the whole session
(``rig_app.virtual_devices``: music_out, noise_out and mic_in, where mic_in hears the
other two through 30 ms loopbacks) and stops it at the end. It skips, saying why, only
when PortAudio or PulseAudio cannot be started here.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rig_app.devices import DeviceError, load_sounddevice
from rig_app.virtual_devices import VirtualDevices, VirtualDevicesError, start_virtual_devices


@pytest.fixture(scope="session")
def virtual_devices() -> Iterator[VirtualDevices]:
    """music_out / noise_out / mic_in PortAudio devices backed by PulseAudio null sinks."""
    try:
        # PortAudio initialised before the devices exist, as when another test imported
        # sounddevice first: the devices must still appear (PortAudio is re-initialised).
        load_sounddevice()
        devices = start_virtual_devices()
    except (DeviceError, VirtualDevicesError) as exc:
        pytest.skip(f"virtual audio devices unavailable: {exc}")
    with devices:
        yield devices
