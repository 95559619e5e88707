#!/usr/bin/env bash
# Builds Mosquitto 2.1.2 from Debian's source package (mosquitto 2.1.2-3, suite unstable) and installs it
# under TARGET_DIR/mosquitto-2.1.2 (broker: sbin/mosquitto), never over the system's broker, so the
# integration tests can run on 2.0 (the system's) and 2.1. Built once: a second run with the same
# version and options does nothing.
#
# The source comes through a private apt configuration under the build directory (its own sources list
# with a deb-src line for unstable only, its own lists and cache), so the machine's package sources stay
# as they are. The mirror is the one the machine already uses for Debian (MOSQUITTO_DEBIAN_MIRROR
# overrides it). Build dependencies come from the machine's normal sources.
#
# usage: scripts/mosquitto-2.1.sh [TARGET_DIR]      (default: $CARGO_TARGET_DIR or target)
set -euo pipefail

UPSTREAM_VERSION=2.1.2
DEBIAN_VERSION=2.1.2-3
# Bump when the options below change, so an existing build is redone.
BUILD_ID="mosquitto ${UPSTREAM_VERSION} build 1"
BUILD_PACKAGES=(dpkg-dev cmake gcc g++ make pkgconf libssl-dev libcjson-dev)
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

cd "$(dirname "$0")/.."
TARGET_DIR=$(realpath -m "${1:-${CARGO_TARGET_DIR:-target}}")
PREFIX="$TARGET_DIR/mosquitto-${UPSTREAM_VERSION}"
WORK="$TARGET_DIR/mosquitto-${UPSTREAM_VERSION}-build"
STAMP="$PREFIX/.built"

if [ -x "$PREFIX/sbin/mosquitto" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$BUILD_ID" ]; then
	echo "mosquitto ${UPSTREAM_VERSION}: already built in $PREFIX"
	exit 0
fi
started=$(date +%s)
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)

missing=()
for package in "${BUILD_PACKAGES[@]}" debian-archive-keyring; do
	dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "mosquitto ${UPSTREAM_VERSION}: installing build dependencies: ${missing[*]}"
	$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
	$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

mirror=${MOSQUITTO_DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
	# The machine's Debian archive: the repository of its release's main suite (not -security/-updates).
	mirror=$(apt-get indextargets --no-release-info --format '$(REPO_URI) $(RELEASE)' |
		awk '$2 !~ /-/ && $1 !~ /security/ {print $1; exit}')
fi
if [ -z "$mirror" ]; then
	echo "mosquitto ${UPSTREAM_VERSION}: no Debian mirror in the machine's apt sources; set MOSQUITTO_DEBIAN_MIRROR" >&2
	exit 1
fi

# Each step's output goes to a log under $WORK, shown when the step fails.
step() {
	local log="$WORK/$1.log"
	shift
	"$@" >"$log" 2>&1 || {
		tail -n 40 "$log" >&2
		echo "mosquitto ${UPSTREAM_VERSION}: failed, see $log" >&2
		exit 1
	}
}
# A private apt: its own config, sources, lists and cache; only deb-src for unstable.
rm -rf "$WORK"
APT_DIR="$WORK/apt"
mkdir -p "$APT_DIR"/{sources.list.d,preferences.d,state/lists/partial,cache/archives/partial} "$WORK/source"
echo "deb-src [signed-by=$KEYRING] ${mirror%/}/ unstable main" >"$APT_DIR/sources.list"
cat >"$APT_DIR/apt.conf" <<EOF
Dir::Etc::SourceList "$APT_DIR/sources.list";
Dir::Etc::SourceParts "$APT_DIR/sources.list.d";
Dir::Etc::Preferences "$APT_DIR/preferences";
Dir::Etc::PreferencesParts "$APT_DIR/preferences.d";
Dir::State "$APT_DIR/state";
Dir::State::status "/var/lib/dpkg/status";
Dir::Cache "$APT_DIR/cache";
APT::Sandbox::User "root";
EOF
export APT_CONFIG="$APT_DIR/apt.conf"
echo "mosquitto ${UPSTREAM_VERSION}: fetching the source package ${DEBIAN_VERSION} (unstable)"
step apt-update apt-get update
# When unstable has moved past 2.1.2-3, a later Debian revision of the same upstream version will do.
offered=$(apt-cache showsrc --only-source mosquitto 2>/dev/null | sed -n 's/^Version: //p' | sort -uV)
version=$(grep -x "$DEBIAN_VERSION" <<<"$offered" || grep "^${UPSTREAM_VERSION}-" <<<"$offered" | tail -1 || true)
if [ -z "$version" ]; then
	echo "mosquitto ${UPSTREAM_VERSION}: unstable offers no mosquitto ${UPSTREAM_VERSION} source (it has: $(echo $offered))" >&2
	exit 1
fi
[ "$version" = "$DEBIAN_VERSION" ] || echo "mosquitto ${UPSTREAM_VERSION}: ${DEBIAN_VERSION} is gone from unstable; using $version"
step apt-source bash -c 'cd "$1" && apt-get source --only-source "mosquitto=$2"' _ "$WORK/source" "$version"
unset APT_CONFIG
SOURCE="$WORK/source/mosquitto-${UPSTREAM_VERSION}"
[ -f "$SOURCE/CMakeLists.txt" ] || {
	echo "mosquitto ${UPSTREAM_VERSION}: source package did not unpack into $SOURCE" >&2
	exit 1
}

# Only the broker and its library. Websockets would need picohttpparser (not in Debian's source tree,
# not in bookworm) and the HTTP API libmicrohttpd; the tests need neither, nor docs, clients or the
# bundled plugins. The broker links its common code statically; the rpath keeps anything of this build
# it might load from being taken from the system's 2.0.
echo "mosquitto ${UPSTREAM_VERSION}: building into $PREFIX"
step cmake cmake -S "$SOURCE" -B "$WORK/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	-DCMAKE_INSTALL_PREFIX="$PREFIX" -DCMAKE_INSTALL_LIBDIR=lib \
	-DCMAKE_INSTALL_RPATH="$PREFIX/lib" -DCMAKE_BUILD_WITH_INSTALL_RPATH=OFF \
	-DWITH_BUNDLED_DEPS=ON -DWITH_TLS=ON -DWITH_WEBSOCKETS=OFF -DWITH_HTTP_API=OFF \
	-DWITH_DOCS=OFF -DWITH_TESTS=OFF -DWITH_CLIENTS=OFF -DWITH_APPS=OFF -DWITH_PLUGINS=OFF \
	-DWITH_LIB_CPP=OFF -DWITH_CTRL_SHELL=OFF -DWITH_LTO=OFF -DWITH_SYSTEMD=OFF -DWITH_SRV=OFF \
	-DWITH_DLT=OFF -DWITH_ADNS=OFF -DUSE_LIBWRAP=OFF
step build cmake --build "$WORK/build" --parallel "$(nproc)"
# Installed beside, then swapped in: a broker already built stays usable until then.
rm -rf "$PREFIX.new" "$PREFIX.old"
step install cmake --install "$WORK/build" --prefix "$PREFIX.new"
banner=$("$PREFIX.new/sbin/mosquitto" -h 2>&1 | head -1 || true)
[[ "$banner" == *"mosquitto version ${UPSTREAM_VERSION}"* ]] || {
	echo "mosquitto ${UPSTREAM_VERSION}: the installed broker does not report version ${UPSTREAM_VERSION}" >&2
	exit 1
}
echo "$version" >"$PREFIX.new/.debian-version"
echo "$BUILD_ID" >"$PREFIX.new/.built"
[ ! -e "$PREFIX" ] || mv "$PREFIX" "$PREFIX.old"
mv "$PREFIX.new" "$PREFIX"
rm -rf "$PREFIX.old"
echo "mosquitto ${UPSTREAM_VERSION}: built in $(($(date +%s) - started)) s: $PREFIX/sbin/mosquitto"
