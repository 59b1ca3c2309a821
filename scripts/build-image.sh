#!/usr/bin/env bash
# Build the service images from the Dockerfile with Debian's podman, on a machine without a Docker engine
# and without a registry: the base is a Debian bookworm root file system made by debootstrap (from
# Debian's mirror) and imported, standing in for python:3.11-slim-bookworm (same Debian, same Python 3.11).
# Everything lives under .tools/podman (its own containers.conf/storage.conf, images, rootfs); stamps
# make later runs reuse the base and the images unless their inputs changed.
#   scripts/build-image.sh [target...]      (default: ingest query retrieve worker)
#   DICOMGW_IMAGE_REPOSITORY (localhost/dicomgw) and DICOMGW_IMAGE_TAG (test) name the images the way
#   the chart does: <repository>-<target>:<tag>. DICOMGW_DOCKERFILE builds another Dockerfile (a
#   candidate change) from the same context.
# To use podman by hand afterwards: source <(scripts/build-image.sh --env)
set -euo pipefail
started=$SECONDS
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TOOLS="${DICOMGW_TOOLS:-$ROOT/.tools}"
DIR="$TOOLS/podman"
REPOSITORY="${DICOMGW_IMAGE_REPOSITORY:-localhost/dicomgw}"
TAG="${DICOMGW_IMAGE_TAG:-test}"
DOCKERFILE="$(realpath "${DICOMGW_DOCKERFILE:-$ROOT/Dockerfile}")"
SUITE=bookworm
MIRROR=http://deb.debian.org/debian
ROOTFS_IMAGE="localhost/dicomgw-rootfs:$SUITE"
BASE_IMAGE="localhost/dicomgw-base:$SUITE"

if [ "${1:-}" = "--env" ]; then
    echo "export CONTAINERS_CONF=$DIR/containers.conf CONTAINERS_STORAGE_CONF=$DIR/storage.conf" \
         "DISABLE_HC_SYSTEMD=true"
    exit 0
fi
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(ingest query retrieve worker)

log() { echo "build-image: $*"; }

# netavark (the containers' network during builds) drives iptables; slirp4netns gives played pods a network
# of their own from which the host's loopback is reachable (tests/integration/test_image.py)
bash "$ROOT/scripts/apt-install.sh" --needs podman --needs runc --needs debootstrap \
    --needs /usr/libexec/podman/catatonit --needs iptables --needs slirp4netns \
    podman runc debootstrap netavark aardvark-dns catatonit iptables slirp4netns

# podman's configuration, private to this checkout (nothing written under /etc):
#  - runc: crun fails on this machine's cgroup v1 layout; cgroupfs and a file event log: no systemd here
#  - the default ulimits of the container engine's host are too low for uvicorn/pip otherwise
mkdir -p "$DIR"
cat > "$DIR/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$DIR/events.log"

[network]
network_backend = "netavark"
EOF
cat > "$DIR/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$DIR/storage"
runroot = "$DIR/run"
EOF
export CONTAINERS_CONF="$DIR/containers.conf" CONTAINERS_STORAGE_CONF="$DIR/storage.conf"
# without systemd, podman cannot schedule healthchecks with timers (they still run on `podman healthcheck run`)
export DISABLE_HC_SYSTEMD=true

# 1. the Debian root file system (debootstrap, once) imported as an image
rootfs_recipe="$SUITE $MIRROR minbase python3 python3-venv ca-certificates"
rootfs_stamp="$DIR/base/.rootfs"
if [ "$(cat "$rootfs_stamp" 2>/dev/null)" != "$rootfs_recipe" ] || ! podman image exists "$ROOTFS_IMAGE"; then
    log "debootstrap $SUITE from $MIRROR (a few minutes, once)..."
    rm -rf "$DIR/base"
    mkdir -p "$DIR/base"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        "$SUITE" "$DIR/base/rootfs" "$MIRROR" > "$DIR/base/debootstrap.log"
    rm -rf "$DIR/base/rootfs/var/cache/apt/archives/"*.deb "$DIR/base/rootfs/var/lib/apt/lists/"*
    tar -C "$DIR/base/rootfs" --numeric-owner -c . | podman import --quiet \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$ROOTFS_IMAGE" > /dev/null
    rm -rf "$DIR/base/rootfs"
    echo "$rootfs_recipe" > "$rootfs_stamp"
    rm -f "$DIR/.base"
fi

# 2. the base the Dockerfile's PYTHON argument points at. The official image provides `python` and
# `pip` on PATH that install where they are told; Debian's pip refuses system installs (PEP 668), so
# here they come from a virtual environment of Debian's python3.11 first on PATH. `uv sync` in the
# Dockerfile then builds /app/.venv on /usr/bin/python3.11, present in every stage of this base.
# uv trusts its own bundled roots, not the system's: SSL_CERT_FILE names the system bundle (the host's,
# mounted during the build, is what lets this network's TLS-intercepting proxy through to PyPI).
base_containerfile='FROM '"$ROOTFS_IMAGE"'
RUN python3 -m venv /opt/python && /opt/python/bin/python -m pip --version
ENV PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt'
base_stamp="$DIR/.base"
base_key="$(podman image inspect --format '{{.Id}}' "$ROOTFS_IMAGE") $(echo "$base_containerfile" | sha256sum)"
if [ "$(cat "$base_stamp" 2>/dev/null)" != "$base_key" ] || ! podman image exists "$BASE_IMAGE"; then
    log "building $BASE_IMAGE"
    echo "$base_containerfile" | podman build --quiet --format docker -t "$BASE_IMAGE" -f - "$DIR/base" > /dev/null
    echo "$base_key" > "$base_stamp"
fi

# 3. the service images: rebuilt when the Dockerfile, the lock, a pyproject or a source changed (podman's
# layer cache then redoes only what depends on the change)
ignore="$DIR/containerignore"
printf '%s\n' '**/__pycache__' '**/*.pyc' '**/*.egg-info' > "$ignore"
inputs="$(cd "$ROOT" && { podman image inspect --format '{{.Id}}' "$BASE_IMAGE"; echo "$REPOSITORY $TAG ${targets[*]}";
    sha256sum < "$DOCKERFILE"; find pyproject.toml uv.lock libs services clients -type f ! -path '*/__pycache__/*' ! -name '*.pyc' \
        ! -path '*.egg-info/*' -print0 | sort -z | xargs -0 sha256sum; } | sha256sum | cut -d' ' -f1)"
images_stamp="$DIR/.images"
missing=0
for target in "${targets[@]}"; do
    podman image exists "$REPOSITORY-$target:$TAG" || missing=1
done
if [ "$(cat "$images_stamp" 2>/dev/null)" = "$inputs" ] && [ $missing = 0 ]; then
    log "images up to date: ${targets[*]/#/$REPOSITORY-} (:$TAG) ($((SECONDS - started)) s)"
    exit 0
fi
rm -f "$images_stamp"
for target in "${targets[@]}"; do
    log "building $REPOSITORY-$target:$TAG"
    # --format docker keeps the Dockerfile's HEALTHCHECK (the OCI format has none); the host's CA
    # bundle is mounted into the RUN steps so that pip/uv reach PyPI through this network's proxy
    podman build --layers --format docker --target "$target" --ignorefile "$ignore" \
        --build-arg "PYTHON=$BASE_IMAGE" --volume /etc/ssl/certs:/etc/ssl/certs:ro \
        -t "$REPOSITORY-$target:$TAG" -f "$DOCKERFILE" "$ROOT" > "$DIR/build-$target.log" 2>&1 \
        || { tail -40 "$DIR/build-$target.log" >&2; log "podman build --target $target failed (log: $DIR/build-$target.log)" >&2; exit 1; }
done
echo "$inputs" > "$images_stamp"
log "built ${targets[*]/#/$REPOSITORY-} (:$TAG) in $((SECONDS - started)) s"
