#!/usr/bin/env bash
# Debian's Chromium (and its chromedriver) for tests/browser, which drive it
# with Playwright for Python. Idempotent: does nothing when /usr/bin/chromium
# is already there. Never use `playwright install`: it downloads a browser
# build of its own, which cannot work without the internet.
#
# It is the test command's first step, so it also puts spandrel into .venv without its
# dependencies (.ci/spandrel.sh says why: pyproject.toml cannot).
set -euo pipefail

bash "$(dirname "$0")/spandrel.sh"

if [ -x /usr/bin/chromium ]; then
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo -n"
fi

export DEBIAN_FRONTEND=noninteractive
echo "browser-deps: installing chromium and chromium-driver with apt" >&2
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq -o Dpkg::Use-Pty=0 chromium chromium-driver >/dev/null
/usr/bin/chromium --version 2>/dev/null | head -n 1 >&2
