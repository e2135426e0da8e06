#!/usr/bin/env bash
# Installs the Debian packages pdrouter builds and tests with. Idempotent: installs only what
# is missing, and runs apt-get update only then. Sourced by run.sh and test.sh.
set -euo pipefail

# gcc brings the sanitizer runtimes (libasan8, libubsan1, libtsan2) through libgcc-N-dev.
PD_PACKAGES=(meson ninja-build pkg-config gcc python3
	     liburing-dev libhwloc-dev libxxhash-dev libcriterion-dev libinih-dev libjson-c-dev)

pd_install_deps() {
	local missing=() p
	for p in "${PD_PACKAGES[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	local sudo=()
	[ "$(id -u)" -eq 0 ] || sudo=(sudo)
	echo "installing: ${missing[*]}"
	"${sudo[@]}" apt-get update -qq
	DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
}

# Runs a command quietly, printing its output only when it fails.
pd_quiet() {
	local out rc=0
	out=$("$@" 2>&1) || rc=$?
	[ $rc -eq 0 ] || printf '%s\n' "$out" >&2
	return $rc
}
