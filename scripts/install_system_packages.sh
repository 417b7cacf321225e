#!/usr/bin/env bash
# Install the Debian/Ubuntu packages the rig, its tests and the GUI need; skip those present.
#   audio:  libportaudio2 (sounddevice), pulseaudio + pulseaudio-utils + libasound2-plugins
#           (the virtual devices the rig tests and the demo record through)
#   songs:  ffmpeg (yt-dlp's FFmpegExtractAudio, and converting files libsndfile cannot read)
#   Qt:     what PySide6's libraries link against, offscreen included (found with ldd on
#           QtCore/QtGui/QtWidgets/QtDBus and the offscreen platform plugin), and a font;
#           the xcb platform plugin (a real X display: ldd on libqxcb.so and
#           libQt6XcbQpa.so.6) and Xvfb with xauth, on which the tests open a real window
# Idempotent: checks each package with dpkg -s first and runs apt-get only for the missing.
# As root it installs; otherwise through sudo when there is one; else it prints the
# apt-get line to run and exits with status 1.
set -euo pipefail

PACKAGES=(
  libportaudio2 pulseaudio pulseaudio-utils libasound2-plugins
  ffmpeg
  libegl1 libgl1 libxkbcommon0 libfontconfig1 libdbus-1-3 libglib2.0-0 fonts-dejavu-core
  libx11-6 libx11-xcb1 libxcb1 libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-image0
  libxcb-randr0 libxcb-render0 libxcb-render-util0 libxcb-shape0 libxcb-shm0 libxcb-sync1
  libxcb-util1 libxcb-xfixes0 libxcb-xkb1 libxkbcommon-x11-0 xvfb xauth
)

say() { printf '\033[1m[system]\033[0m %s\n' "$*" >&2; }

if ! command -v dpkg >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
  say "not a Debian-like system: install the equivalents of: ${PACKAGES[*]}"
  exit 1
fi

missing=()
for package in "${PACKAGES[@]}"; do
  if ! dpkg -s "$package" 2>/dev/null | grep -q '^Status: install ok installed'; then
    missing+=("$package")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

install_line="apt-get update && apt-get install -y --no-install-recommends ${missing[*]}"
if [ "$(id -u)" -eq 0 ]; then
  run=()
elif command -v sudo >/dev/null 2>&1 && { [ -t 0 ] || sudo -n true 2>/dev/null; }; then
  run=(sudo)
else
  say "missing system packages: ${missing[*]}"
  say "run as root: $install_line"
  exit 1
fi

say "installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
${run[@]+"${run[@]}"} apt-get update -q
${run[@]+"${run[@]}"} apt-get install -y -q --no-install-recommends "${missing[@]}"
