#!/usr/bin/env bash
# Redis server from Debian packages, for the Celery tier's tests and the local stack.
set -euo pipefail
if command -v redis-server >/dev/null 2>&1; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq redis-server >/dev/null
# the package starts a system instance; the tests and `make up` run their own on other ports
$SUDO systemctl disable --now redis-server >/dev/null 2>&1 || true
