#!/usr/bin/env bash
# What the OHIF end-to-end test needs: Debian's Chromium, the published OHIF viewer build (npm package
# @ohif/app, its dist/ folder) and playwright-core to drive Chromium. Cached under .tools/ohif; a second
# run with the same pins does nothing.
set -euo pipefail
OHIF_VERSION="3.13.2"
# npm's dist.integrity for @ohif/app@3.13.2: the tarball is checked against it before use
OHIF_INTEGRITY="sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA=="
REPO="$(cd "$(dirname "$0")/.." && pwd)"
TOOLS="${DICOMGW_TOOLS:-$REPO/.tools}"
DEST="$TOOLS/ohif"
LOCK="$REPO/tests/e2e/ohif/package-lock.json"  # pins playwright-core (exact version and integrity)
STAMP="$DEST/.versions"
WANT="ohif=$OHIF_VERSION driver=$(sha256sum "$LOCK" | cut -c1-16)"

if ! command -v chromium >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq chromium >/dev/null
fi

if [ "$(cat "$STAMP" 2>/dev/null)" = "$WANT" ] && [ -f "$DEST/dist/index.html" ] \
        && [ -f "$DEST/driver/node_modules/playwright-core/package.json" ]; then
    exit 0
fi
command -v npm >/dev/null || { echo "npm is needed for the OHIF build and playwright-core" >&2; exit 1; }
echo "installing the OHIF viewer build $OHIF_VERSION and playwright-core into $DEST (once)..."
rm -rf "$DEST"
mkdir -p "$DEST/pack" "$DEST/driver"
# The package's tarball carries the built viewer (dist/); its dependencies are only for building it,
# so the tarball is unpacked rather than installed.
(cd "$DEST/pack" && npm pack --silent "@ohif/app@$OHIF_VERSION" >/dev/null)
TARBALL="$DEST/pack/ohif-app-$OHIF_VERSION.tgz"
GOT="sha512-$(node -e 'const h=require("crypto").createHash("sha512");h.update(require("fs").readFileSync(process.argv[1]));console.log(h.digest("base64"))' "$TARBALL")"
if [ "$GOT" != "$OHIF_INTEGRITY" ]; then
    echo "@ohif/app@$OHIF_VERSION tarball integrity mismatch: $GOT" >&2
    exit 1
fi
tar -xzf "$TARBALL" -C "$DEST/pack"
mv "$DEST/pack/package/dist" "$DEST/dist"
rm -rf "$DEST/pack"
# playwright-core drives an installed browser and downloads none itself
cp "$REPO/tests/e2e/ohif/package.json" "$LOCK" "$DEST/driver/"
(cd "$DEST/driver" && npm ci --silent --no-audit --no-fund >/dev/null)
echo "$WANT" > "$STAMP"
