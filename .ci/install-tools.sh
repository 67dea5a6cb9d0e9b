#!/usr/bin/env bash
# Installs the tools the test suite drives, where they are missing:
# curl, Python `requests`, redis-server, and (through install-browser.sh)
# headless Chromium with its driver. Idempotent and quiet.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

missing=()
command -v curl >/dev/null || missing+=(curl)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v python3 >/dev/null || missing+=(python3 python3-pip)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
python3 -c 'import requests' 2>/dev/null || pip install -q requests
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt

if [ -f .ci/install-browser.sh ]; then
  bash .ci/install-browser.sh
fi
echo "tools: curl $(curl --version | head -1 | cut -d' ' -f2), $(python3 --version), $(redis-server --version | cut -d' ' -f3)"
