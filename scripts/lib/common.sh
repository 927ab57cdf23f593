# shellcheck shell=bash
# Helpers shared by scripts/demo and scripts/test. Source it; do not run it.

# Print a progress line on stderr.
log() { printf '==> %s\n' "$*" >&2; }

# Print an error and exit 1.
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# True if the Debian package $1 is installed.
pkg_installed() {
	[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]
}

# Install those of the given Debian packages that are missing (needs root).
ensure_packages() {
	local missing=() p
	for p in "$@"; do
		pkg_installed "$p" || missing+=("$p")
	done
	[ "${#missing[@]}" -eq 0 ] && return 0
	log "installing missing packages: ${missing[*]}"
	local sudo=()
	if [ "$(id -u)" -ne 0 ]; then
		command -v sudo >/dev/null 2>&1 || die "need root to install: ${missing[*]}"
		sudo=(sudo)
	fi
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q ||
		die "apt-get update failed"
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -q --no-install-recommends "${missing[@]}" ||
		die "apt-get install failed: ${missing[*]}"
}

# What building and running imapgate with its demo and tests needs.
# shellcheck disable=SC2034  # used by the scripts that source this file
BUILD_PACKAGES=(build-essential meson ninja-build pkg-config
	libevent-dev libssl-dev libyaml-dev libsystemd-dev dovecot-imapd openssl python3)

# What scripts/package needs to build and check the .deb (debian/control's
# Build-Depends plus the tools; systemd for systemd-analyze).
# shellcheck disable=SC2034
DEB_PACKAGES=(build-essential debhelper dpkg-dev meson ninja-build pkg-config
	libevent-dev libssl-dev libyaml-dev libsystemd-dev lintian systemd)

# Configure and build the meson build dir $1; further args go to meson setup
# (an existing dir is reconfigured with them, so options always apply).
build_tree() {
	local dir=$1
	shift
	if [ ! -f "$dir/build.ninja" ]; then
		log "meson setup $dir $*"
		meson setup "$dir" "$@" || return 1
	elif [ "$#" -gt 0 ]; then
		log "meson setup --reconfigure $dir $*"
		meson setup --reconfigure "$dir" "$@" || return 1
	fi
	log "ninja -C $dir"
	ninja -C "$dir"
}
