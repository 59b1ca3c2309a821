#!/usr/bin/env bash
# Install Debian packages unless what they provide is already there; leave their system services off
# (tests and `make up` run their own instances on their own ports).
#   scripts/apt-install.sh --needs <command or path glob> [--service <name>] <package>...
set -euo pipefail
needs=() services=() packages=()
while [ $# -gt 0 ]; do
    case "$1" in
        --needs) needs+=("$2"); shift 2 ;;
        --service) services+=("$2"); shift 2 ;;
        *) packages+=("$1"); shift ;;
    esac
done
present() {
    local what
    for what in "${needs[@]}"; do
        # shellcheck disable=SC2086
        if ! command -v "$what" >/dev/null 2>&1 && ! ls $what >/dev/null 2>&1; then
            return 1
        fi
    done
}
if present; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
for service in "${services[@]}"; do
    $SUDO systemctl disable --now "$service" >/dev/null 2>&1 || $SUDO service "$service" stop >/dev/null 2>&1 || true
done
