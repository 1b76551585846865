#!/usr/bin/env bash
# Everything the test suite needs on a fresh Debian machine: the real components the integration tests talk to
# (nginx with the RTMP module, Mesa's EGL for the face3d renderer, OBS Studio headless under Xvfb, a PulseAudio loopback, PortAudio, Debian's
# Chromium for the browser tests, driven by Playwright with its executable path: no browser download) and the Python
# packages (anchorcast with its extras; torch pinned to the CPU build these machines carry).
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1

APT_PACKAGES=(nginx libnginx-mod-rtmp obs-studio xvfb xauth pulseaudio pulseaudio-utils libasound2-plugins
              libportaudio2 iproute2 util-linux chromium libegl1 libegl-mesa0 libgl1-mesa-dri)
if ! dpkg -s "${APT_PACKAGES[@]}" >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${APT_PACKAGES[@]}"
fi

python -m pip install --quiet -e '.[test,wav2lip,face3d,live]'
