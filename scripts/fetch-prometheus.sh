#!/usr/bin/env bash
# Prometheus and promtool from Debian's archive, for the tests of the monitor's /metrics:
# the package's binaries unpacked into the cache, not installed (installing Debian's
# package would also start a Prometheus service on port 9090 on this machine).
#
#   bash scripts/fetch-prometheus.sh    prints the directory holding prometheus and promtool
set -euo pipefail

CACHE="${MAFALDA_CACHE:-$HOME/.cache/mafalda}/prometheus"
if [[ -x "$CACHE/usr/bin/prometheus" && -x "$CACHE/usr/bin/promtool" ]]; then
	echo "$CACHE/usr/bin"
	exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
chmod 755 "$tmp"  # apt's sandbox user writes the download there
cd "$tmp"
if ! apt-get download prometheus >/dev/null 2>&1; then
	apt-get update -qq  # a fresh machine may have no package lists yet
	apt-get download prometheus >/dev/null
fi
rm -rf "$CACHE.new"
mkdir -p "$CACHE.new"
dpkg-deb -x prometheus_*.deb "$CACHE.new"
rm -rf "$CACHE"
mv "$CACHE.new" "$CACHE"
echo "$CACHE/usr/bin"
