"""Virtual audio devices for tests, benchmarks and the demo: no sound card needed.

A user-mode PulseAudio daemon with three null sinks (``music``, ``noise``, ``room``) and
two loopbacks that play the monitors of ``music`` and ``noise`` into ``room``, each with
30 ms of latency (the recipe of docs/design.md §5). Three ALSA PCMs make them PortAudio
devices: ``music_out`` (plays into ``music``), ``noise_out`` (into ``noise``) and
``mic_in`` (records ``room.monitor``), so what ``mic_in`` records is what was played on
the other two, with the loopbacks' real latency and a little drift.

Nothing in the user's home is touched: the daemon runs with a private HOME and runtime
folder in a temporary directory, the PCMs are defined in a file of their own that is
appended to ``ALSA_CONFIG_PATH`` (after the system's ``alsa.conf``, which still loads the
user's ``~/.asoundrc``), each PCM names the daemon's socket itself, and ``PULSE_COOKIE``
points at the daemon's cookie so that libpulse does not create one in ``~/.config``.
PortAudio reads the ALSA configuration when it is initialised, so if ``sounddevice`` was
imported already, PortAudio is re-initialised (``rig_app.devices.refresh_devices``).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from afp_core.errors import AfpError
from rig_app.devices import DeviceError, hold_portaudio, list_devices

__all__ = ["VirtualDevices", "VirtualDevicesError", "start_virtual_devices"]

_SYSTEM_ALSA_CONF = (Path("/usr/share/alsa/alsa.conf"), Path("/usr/local/share/alsa/alsa.conf"))
_PULSE_PLUGIN = "libasound_module_pcm_pulse.so"
_ENV_KEYS = ("ALSA_CONFIG_PATH", "PULSE_COOKIE")
_PACKAGES = "apt-get install pulseaudio pulseaudio-utils libasound2-plugins libportaudio2"


class VirtualDevicesError(AfpError):
    """The virtual devices cannot be started here; the message says why."""


@dataclass
class VirtualDevices:
    """A running virtual-device daemon; ``stop`` (or leaving the ``with``) ends it."""

    root: Path
    server: str
    alsa_config: Path
    music_out: str
    noise_out: str
    mic_in: str
    latency_msec: int
    process: subprocess.Popen[bytes] = field(repr=False)
    log_path: Path = field(repr=False)
    _env_before: dict[str, str | None] = field(default_factory=dict, repr=False)
    _own_root: bool = field(default=False, repr=False)
    _stopped: bool = field(default=False, repr=False)

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    @property
    def cookie(self) -> Path:
        return self.root / "home" / ".config" / "pulse" / "cookie"

    def env(self) -> dict[str, str]:
        """Variables a child process needs to use these devices (add them to its env)."""
        return {
            "ALSA_CONFIG_PATH": os.environ.get("ALSA_CONFIG_PATH", ""),
            "PULSE_COOKIE": str(self.cookie),
        }

    def pactl(self, *args: str, timeout_s: float = 10.0) -> str:
        """Run ``pactl`` against this daemon; its standard output."""
        env = {**os.environ, "PULSE_SERVER": self.server, "PULSE_COOKIE": str(self.cookie)}
        env["HOME"] = str(self.root / "home")
        try:
            done = subprocess.run(
                ["pactl", *args],
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise VirtualDevicesError(f"pactl {' '.join(args)}: {exc}") from None
        if done.returncode != 0:
            reason = " ".join(done.stderr.split()) or f"exit status {done.returncode}"
            raise VirtualDevicesError(f"pactl {' '.join(args)}: {reason}")
        return done.stdout

    def kill(self) -> None:
        """SIGKILL the daemon: every stream on these devices fails (tests of lost devices)."""
        if self.running:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        """End the daemon, take the PCMs out of ALSA's configuration, remove the files."""
        if self._stopped:
            return
        self._stopped = True
        if self.running:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if self._env_before:
            _remove_config(self.alsa_config, self._env_before)
        if "sounddevice" in sys.modules:
            # PortAudio would otherwise keep listing devices that are gone.
            with contextlib.suppress(DeviceError):
                list_devices(refresh=True)
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> VirtualDevices:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _system_alsa_conf() -> Path:
    for path in _SYSTEM_ALSA_CONF:
        if path.is_file():
            return path
    raise VirtualDevicesError(
        "ALSA's alsa.conf not found in /usr/share/alsa; apt-get install libasound2"
    )


def _check_tools() -> None:
    missing = [tool for tool in ("pulseaudio", "pactl") if shutil.which(tool) is None]
    if missing:
        raise VirtualDevicesError(f"{' and '.join(missing)} not installed; {_PACKAGES}")
    roots = [Path("/usr/lib"), Path("/usr/lib64"), Path("/usr/local/lib")]
    if not any(
        (root / sub / _PULSE_PLUGIN).is_file()
        for root in roots
        for sub in ("alsa-lib", *(f"{d.name}/alsa-lib" for d in _subdirs(root)))
    ):
        raise VirtualDevicesError(
            f"ALSA's PulseAudio plugin ({_PULSE_PLUGIN}) is missing; {_PACKAGES}"
        )


def _subdirs(root: Path) -> list[Path]:
    try:
        return [p for p in root.iterdir() if p.is_dir() and "-linux-" in p.name]
    except OSError:
        return []


def _daemon_command(latency_msec: int) -> list[str]:
    return [
        "pulseaudio",
        "-n",
        "--daemonize=no",
        "--exit-idle-time=-1",
        "-L",
        "module-native-protocol-unix",
        "-L",
        "module-null-sink sink_name=music",
        "-L",
        "module-null-sink sink_name=noise",
        "-L",
        "module-null-sink sink_name=room",
        "-L",
        f"module-loopback source=music.monitor sink=room latency_msec={latency_msec}",
        "-L",
        f"module-loopback source=noise.monitor sink=room latency_msec={latency_msec}",
    ]


def _alsa_text(server: str, names: dict[str, str]) -> str:
    lines = ["# PCMs of an afp-rig virtual-device daemon; removed when it stops"]
    for name, device in names.items():
        lines.append(f'pcm.{name} {{ type pulse; device "{device}"; server "{server}" }}')
    return "\n".join(lines) + "\n"


def _add_config(path: Path) -> dict[str, str | None]:
    before = {key: os.environ.get(key) for key in _ENV_KEYS}
    base = before["ALSA_CONFIG_PATH"] or str(_system_alsa_conf())
    os.environ["ALSA_CONFIG_PATH"] = f"{base}:{path}"
    return before


def _remove_config(path: Path, before: dict[str, str | None]) -> None:
    current = os.environ.get("ALSA_CONFIG_PATH", "")
    parts = [p for p in current.split(":") if p and p != str(path)]
    previous = before.get("ALSA_CONFIG_PATH")
    # Back to exactly what it was when ours was the only addition (an unset variable
    # included); otherwise only ours is taken out, so other instances keep theirs.
    if previous is None and len(parts) == 1 and Path(parts[0]) in _SYSTEM_ALSA_CONF:
        os.environ.pop("ALSA_CONFIG_PATH", None)
    else:
        os.environ["ALSA_CONFIG_PATH"] = ":".join(parts)
    cookie = before.get("PULSE_COOKIE")
    if cookie is None:
        os.environ.pop("PULSE_COOKIE", None)
    else:
        os.environ["PULSE_COOKIE"] = cookie


def _wait_ready(devices: VirtualDevices, timeout_s: float) -> None:
    socket = devices.root / "run" / "pulse" / "native"
    deadline = time.monotonic() + timeout_s
    last = "the daemon did not create its socket"
    while time.monotonic() < deadline:
        if not devices.running:
            log = devices.log_path.read_text(errors="replace").strip().splitlines()
            tail = log[-1] if log else f"exit status {devices.process.returncode}"
            raise VirtualDevicesError(f"pulseaudio exited at start: {tail}")
        if socket.exists():
            try:
                sinks = devices.pactl("list", "short", "sinks", timeout_s=5)
                modules = devices.pactl("list", "short", "modules", timeout_s=5)
            except VirtualDevicesError as exc:
                last = str(exc)
            else:
                names = {line.split("\t")[1] for line in sinks.splitlines() if "\t" in line}
                loopbacks = modules.count("module-loopback")
                if {"music", "noise", "room"} <= names and loopbacks >= 2:
                    return
                last = f"sinks so far: {', '.join(sorted(names)) or 'none'}"
        time.sleep(0.05)
    raise VirtualDevicesError(f"pulseaudio not ready after {timeout_s:g} s ({last})")


def _warm_up(mic_in: str, timeout_s: float) -> None:
    """Record until the first block arrives: a fresh daemon's ``room.monitor`` takes about
    two seconds to deliver anything, which would otherwise eat a first take's lead-in."""
    with hold_portaudio() as sd:
        arrived = threading.Event()
        try:
            stream = sd.InputStream(
                device=mic_in,
                channels=1,
                dtype="float32",
                callback=lambda *_: arrived.set(),
            )
            with stream:
                if not arrived.wait(timeout_s):
                    raise VirtualDevicesError(f"{mic_in}: no audio after {timeout_s:g} s")
        except sd.PortAudioError as exc:
            raise VirtualDevicesError(f"{mic_in}: cannot record ({exc})") from None


def start_virtual_devices(
    root: Path | str | None = None,
    *,
    prefix: str = "",
    latency_msec: int = 30,
    timeout_s: float = 15.0,
) -> VirtualDevices:
    """Start the daemon, define the PCMs and make PortAudio see them.

    ``root``: folder for the daemon's files (default: a new temporary folder, removed
    by ``stop``). ``prefix`` goes before the PCM names (``music_out`` ...), so that two
    instances can run at once. ``VirtualDevicesError`` says why it cannot start
    (a package missing, the daemon refusing, PortAudio not listing the devices).
    """
    _check_tools()
    own_root = root is None
    folder = Path(tempfile.mkdtemp(prefix="afp-vdev-")) if root is None else Path(root)
    home, run = folder / "home", folder / "run"
    for path in (home, run):
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o700)
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PULSE_", "DBUS_")) and key not in ("DISPLAY", "ALSA_CONFIG_PATH")
    }
    env.update(HOME=str(home), XDG_RUNTIME_DIR=str(run), XDG_CONFIG_HOME=str(home / ".config"))
    log_path = folder / "pulseaudio.log"
    server = f"unix:{run / 'pulse' / 'native'}"
    names = {
        f"{prefix}music_out": "music",
        f"{prefix}noise_out": "noise",
        f"{prefix}mic_in": "room.monitor",
    }
    alsa_config = folder / "asound.conf"
    alsa_config.write_text(_alsa_text(server, names), encoding="utf-8")
    with log_path.open("wb") as log:
        try:
            process = subprocess.Popen(
                _daemon_command(latency_msec),
                env=env,
                cwd=folder,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            raise VirtualDevicesError(f"cannot start pulseaudio: {exc}") from None
    devices = VirtualDevices(
        root=folder,
        server=server,
        alsa_config=alsa_config,
        music_out=f"{prefix}music_out",
        noise_out=f"{prefix}noise_out",
        mic_in=f"{prefix}mic_in",
        latency_msec=latency_msec,
        process=process,
        log_path=log_path,
        _own_root=own_root,
    )
    atexit.register(devices.stop)
    try:
        _wait_ready(devices, timeout_s)
        devices._env_before = _add_config(alsa_config)
        os.environ["PULSE_COOKIE"] = str(devices.cookie)
        try:
            found = {d.name for d in list_devices(refresh="sounddevice" in sys.modules)}
        except DeviceError as exc:
            raise VirtualDevicesError(str(exc)) from None
        missing = [name for name in names if name not in found]
        if missing:
            raise VirtualDevicesError(
                f"PortAudio does not list {', '.join(missing)} (it has: "
                f"{', '.join(sorted(found)) or 'none'}); is PortAudio built with ALSA?"
            )
        _warm_up(devices.mic_in, timeout_s)
    except BaseException:
        devices.stop()
        raise
    return devices
