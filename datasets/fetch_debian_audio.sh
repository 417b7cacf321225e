#!/usr/bin/env bash
# Fetch the development audio (docs/design.md §6) from Debian's package registry without
# installing anything: `apt-get download` + `dpkg -x` into datasets/cache/debian/.
# Idempotent.
# Music for development and training; speech for babble noise. Other audio is kept for
# independent evaluation and must not be fetched here.
set -euo pipefail
cd "$(dirname "$0")"
CACHE=cache
ROOT=$CACHE/debian
PACKAGES=(
  wesnoth-1.16-music planetblupi-music-ogg drascula-music singularity-music asc-music
  asterisk-core-sounds-en-wav
)
mkdir -p "$CACHE/debs" "$ROOT"
missing=()
for p in "${PACKAGES[@]}"; do
  [ -f "$ROOT/.done-$p" ] || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
command -v apt-get >/dev/null || { echo "apt-get not found: install the packages ${missing[*]} by hand" >&2; exit 1; }
if [ "$(id -u)" = 0 ] && [ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v lock)" ]; then
  apt-get update -q >/dev/null
fi
for p in "${missing[@]}"; do
  echo "[data] fetching $p" >&2
  (cd "$CACHE/debs" && apt-get download -q "$p" >/dev/null 2>&1) \
    || { [ "$(id -u)" = 0 ] && apt-get update -q >/dev/null && (cd "$CACHE/debs" && apt-get download -q "$p" >/dev/null); }
  dpkg -x "$(ls -t "$CACHE"/debs/"$p"_*.deb | head -n 1)" "$ROOT"
  rm -f "$CACHE"/debs/"$p"_*.deb
  touch "$ROOT/.done-$p"
done
