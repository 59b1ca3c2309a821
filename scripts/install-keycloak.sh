#!/usr/bin/env bash
# Keycloak, the OpenID provider of the login tests: its server distribution from Maven Central
# (org.keycloak:keycloak-quarkus-dist, fetched with Maven's dependency plugin), unpacked into .tools/keycloak
# once. It runs on the machine's Java 17 (`kc.sh start-dev`, started by tests/fixtures/keycloak.py).
set -euo pipefail
VERSION=26.0.8   # the newest 26.0.x distribution Maven Central served here
TOOLS="${DICOMGW_TOOLS:-$(cd "$(dirname "$0")/.." && pwd)/.tools}"
OUT="$TOOLS/keycloak"
if [ "$(cat "$OUT/.version" 2>/dev/null)" = "$VERSION" ] && [ -x "$OUT/bin/kc.sh" ]; then
    exit 0
fi
bash "$(dirname "$0")/apt-install.sh" --needs java --needs mvn --needs unzip openjdk-17-jre-headless maven unzip
echo "installing Keycloak $VERSION from Maven Central into $OUT (once)..."
mkdir -p "$TOOLS/downloads"
mvn -q -U org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy \
    -Dartifact="org.keycloak:keycloak-quarkus-dist:$VERSION:zip" -DoutputDirectory="$TOOLS/downloads"
zip="$TOOLS/downloads/keycloak-quarkus-dist-$VERSION.zip"
rm -rf "$OUT" "$TOOLS/keycloak-$VERSION"
unzip -q "$zip" -d "$TOOLS"
mv "$TOOLS/keycloak-$VERSION" "$OUT"
rm -f "$zip"
echo "$VERSION" > "$OUT/.version"
"$OUT/bin/kc.sh" --version | head -1
