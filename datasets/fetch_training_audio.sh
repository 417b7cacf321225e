#!/usr/bin/env bash
# Fetch the extra *training-only* audio (docs/design.md, "Data policy") from Debian's
# package registry and render it to audio files, without installing the packages:
# `apt-get download` + `dpkg-deb` into datasets/cache/training-audio/{music,noise}/<package>/.
#
#   bash datasets/fetch_training_audio.sh        # idempotent; about 1.6 GB of downloads
#
# Music (added to the training split only, never to validation or test):
#   0ad-data               the orchestral soundtrack (audio/music/*.ogg inside public.zip)
#   pingus-data            tracker modules (.it/.s3m), rendered with ffmpeg (libopenmpt)
#   fb-music-high          one tracker module (.xm), rendered the same way
#   xblast-tnt-musics      raw unsigned 8-bit mono PCM at 22.05 kHz, wrapped as FLAC
#   openttd-openmsx        MIDI, rendered with FluidSynth through fluid-soundfont-gm
#   planetblupi-music-midi MIDI, rendered with FluidSynth through timgm6mb-soundfont
#                          (the same compositions as planetblupi-music-ogg: see the data card)
# Noise (added to the training noise clips):
#   openarena-data         ambient world sounds (sound/world/**.wav inside pak0.pk3)
# neverball-data holds no audio (maps and images only): nothing is taken from it.
# The data card, datasets/TRAINING_DATA.md, is written by datasets/make_data_card.py.
set -euo pipefail
cd "$(dirname "$0")"
CACHE=cache
DEBS=$CACHE/debs
OUT=$CACHE/training-audio
RATE=22050
mkdir -p "$DEBS" "$OUT"

say() { printf '\033[1m[data]\033[0m %s\n' "$*" >&2; }

need_tool() {  # command, Debian package
  command -v "$1" >/dev/null && return 0
  if [ "$(id -u)" = 0 ]; then
    apt-get install -y -q --no-install-recommends "$2" >/dev/null
  else
    say "$1 is missing: apt-get install $2"
    exit 1
  fi
}

download() {  # package -> path of its .deb
  local p=$1 deb
  deb=$(ls -t "$DEBS"/"$p"_*.deb 2>/dev/null | head -n 1 || true)
  if [ -z "$deb" ]; then
    say "downloading $p"
    (cd "$DEBS" && apt-get download -q "$p" >/dev/null 2>&1) \
      || { [ "$(id -u)" = 0 ] && apt-get update -q >/dev/null && (cd "$DEBS" && apt-get download -q "$p" >/dev/null); }
    deb=$(ls -t "$DEBS"/"$p"_*.deb | head -n 1)
  fi
  printf '%s\n' "$deb"
}

extract() {  # package, member path(s) inside the .deb -> files under $tmp
  local deb
  deb=$(download "$1")
  shift
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp" "$@"
}

done_mark() { touch "$OUT/.done-$1"; rm -f "$DEBS"/"$1"_*.deb; }
is_done() { [ -f "$OUT/.done-$1" ]; }

render_module() {  # tracker module -> FLAC (ffmpeg's libopenmpt decoder plays it once)
  ffmpeg -nostdin -loglevel error -y -i "$1" -ac 1 -ar "$RATE" -c:a flac "$2"
}

render_midi() {  # MIDI file, soundfont -> FLAC
  local wav="${2%.flac}.wav"
  fluidsynth -ni -q -g 0.6 -r "$RATE" -F "$wav" "$3" "$1" >/dev/null 2>&1
  ffmpeg -nostdin -loglevel error -y -i "$wav" -ac 1 -c:a flac "$2"
  rm -f "$wav"
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if ! is_done 0ad-data; then
  extract 0ad-data ./usr/share/games/0ad/mods/public/public.zip
  mkdir -p "$OUT/music/0ad-data"
  unzip -q -o -j "$tmp/usr/share/games/0ad/mods/public/public.zip" 'audio/music/*.ogg' -d "$OUT/music/0ad-data"
  rm -rf "${tmp:?}"/*
  done_mark 0ad-data
fi

if ! is_done pingus-data || ! is_done fb-music-high; then
  need_tool ffmpeg ffmpeg
fi
if ! is_done pingus-data; then
  extract pingus-data ./usr/share/games/pingus/data/music
  mkdir -p "$OUT/music/pingus-data"
  for f in "$tmp"/usr/share/games/pingus/data/music/*; do
    name=$(basename "$f")
    render_module "$f" "$OUT/music/pingus-data/${name%.*}.flac"
  done
  rm -rf "${tmp:?}"/*
  done_mark pingus-data
fi

if ! is_done fb-music-high; then
  extract fb-music-high ./usr/share/games/frozen-bubble/snd
  mkdir -p "$OUT/music/fb-music-high"
  for f in "$tmp"/usr/share/games/frozen-bubble/snd/*.xm; do
    name=$(basename "$f")
    render_module "$f" "$OUT/music/fb-music-high/${name%.*}.flac"
  done
  rm -rf "${tmp:?}"/*
  done_mark fb-music-high
fi

if ! is_done xblast-tnt-musics; then
  need_tool ffmpeg ffmpeg
  extract xblast-tnt-musics ./usr/share/games/xblast-tnt/sounds
  mkdir -p "$OUT/music/xblast-tnt-musics"
  for f in "$tmp"/usr/share/games/xblast-tnt/sounds/*.raw; do
    name=$(basename "$f" .raw)
    ffmpeg -nostdin -loglevel error -y -f u8 -ar 22050 -ac 1 -i "$f" -c:a flac \
      "$OUT/music/xblast-tnt-musics/$name.flac"
  done
  rm -rf "${tmp:?}"/*
  done_mark xblast-tnt-musics
fi

# MIDI: one soundfont per collection, so no composition is rendered twice.
midi_collection() {  # package, folder inside it, soundfont package, soundfont path inside it
  local package=$1 folder=$2 sf_package=$3 sf_path=$4
  is_done "$package" && return 0
  need_tool fluidsynth fluidsynth
  need_tool ffmpeg ffmpeg
  local sf=$CACHE/soundfonts/$(basename "$sf_path")
  if [ ! -f "$sf" ]; then
    mkdir -p "$CACHE/soundfonts"
    extract "$sf_package" "./$sf_path"
    mv "$tmp/$sf_path" "$sf"
    rm -f "$DEBS"/"$sf_package"_*.deb
    rm -rf "${tmp:?}"/*
  fi
  extract "$package" "./$folder"
  mkdir -p "$OUT/music/$package"
  for f in "$tmp/$folder"/*.mid; do
    name=$(basename "$f" .mid)
    render_midi "$f" "$OUT/music/$package/$name.flac" "$sf"
  done
  rm -rf "${tmp:?}"/*
  done_mark "$package"
}
midi_collection openttd-openmsx usr/share/games/openttd/baseset/openmsx \
  fluid-soundfont-gm usr/share/sounds/sf2/FluidR3_GM.sf2
midi_collection planetblupi-music-midi usr/share/planetblupi/music \
  timgm6mb-soundfont usr/share/sounds/sf2/TimGM6mb.sf2

if ! is_done openarena-data; then
  extract openarena-data ./usr/share/games/openarena/baseoa/pak0.pk3
  mkdir -p "$OUT/noise/openarena-data"
  unzip -q -o "$tmp/usr/share/games/openarena/baseoa/pak0.pk3" 'sound/world/*.wav' -d "$tmp/pk3"
  # flatten sound/world/new/x.wav -> new-x.wav so that names stay unique
  (cd "$tmp/pk3/sound/world" && find . -name '*.wav' -print0) | while IFS= read -r -d '' f; do
    name=${f#./}
    cp "$tmp/pk3/sound/world/$name" "$OUT/noise/openarena-data/${name//\//-}"
  done
  rm -rf "${tmp:?}"/*
  done_mark openarena-data
fi
say "training audio ready in datasets/$OUT"
