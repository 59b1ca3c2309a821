#!/usr/bin/env bash
# dcmtk (storescu, echoscu) from Debian packages: a real DIMSE peer for the front door's tests.
set -euo pipefail
if command -v storescu >/dev/null 2>&1 && command -v echoscu >/dev/null 2>&1; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends dcmtk >/dev/null
