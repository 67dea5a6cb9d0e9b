#!/usr/bin/env bash
# Installs what tests/browser.rs needs, idempotently, quietly and without
# questions: Debian's chromium and chromium-driver, and Python's selenium for
# the `python3` on PATH (the one the test runs). Nothing here, nor in the
# test, downloads a browser or driver of its own: the test gives selenium the
# paths of Debian's. Run as root.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1

log=$(mktemp)
trap 'rm -f "$log"' EXIT

# Runs a command with its output kept aside, and shown only if it fails.
quietly() {
    if ! "$@" >"$log" 2>&1; then
        cat "$log" >&2
        echo "install-browser: failed: $*" >&2
        return 1
    fi
}

if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    echo "install-browser: apt-get install chromium chromium-driver"
    quietly apt-get update -q
    quietly apt-get install -y -q --no-install-recommends \
        chromium chromium-driver fonts-dejavu-core
fi

if ! python3 -c 'import selenium' 2>/dev/null; then
    echo "install-browser: pip install selenium"
    # A Debian-managed python3 refuses plain pip installs (PEP 668).
    quietly python3 -m pip install --quiet selenium ||
        quietly python3 -m pip install --quiet --break-system-packages selenium
fi

# (Debian's chromium launcher may print a harmless shell warning of its own.)
echo "install-browser: $(/usr/bin/chromium --version 2>/dev/null)," \
    "$(/usr/bin/chromedriver --version | cut -d' ' -f1-2)," \
    "selenium $(python3 -c 'import selenium; print(selenium.__version__)')"
