#!/usr/bin/env bash
# `meson install --destdir` into a temporary directory, then check that the
# installed tree is complete: the binary in sbin (it runs, -V and -t), the
# man page, the systemd unit (with this prefix's paths; systemd-analyze
# verify when systemd-analyze is there), the example configuration and the
# presets (identical to the source), the documentation, and nothing in
# sysconfdir.
#
# usage: check_install.sh BUILD_DIR SOURCE_ROOT PREFIX SBINDIR MANDIR DOCDIR UNITDIR SYSCONFDIR
set -uo pipefail

build=$1 src=$2 prefix=$3 sbindir=$4 mandir=$5 docdir=$6 unitdir=$7 sysconfdir=$8
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
ok() { echo "ok: $*"; }

dest=$(mktemp -d "${TMPDIR:-/tmp}/imapgate-install.XXXXXX") || exit 1
trap 'rm -rf "$dest"' EXIT

if ! meson install -C "$build" --destdir "$dest" --no-rebuild --quiet >"$dest.log" 2>&1; then
	cat "$dest.log"
	rm -f "$dest.log"
	echo "FAIL: meson install --destdir"
	exit 1
fi
rm -f "$dest.log"

# Every file the issue names, and what each must be.
expect_file() { # path-under-dest [mode-check]
	if [ -f "$dest$1" ]; then ok "$1"; else fail "missing $1"; fi
}
same_as() { # installed source
	if cmp -s "$dest$1" "$src/$2"; then ok "$1 = $2"; else fail "$1 differs from $2 (or is missing)"; fi
}

bin=$dest$sbindir/imapgate
if [ -x "$bin" ]; then ok "$sbindir/imapgate executable"; else fail "no executable $sbindir/imapgate"; fi
if [ -e "$dest$prefix/bin/imapgate" ]; then fail "imapgate also in $prefix/bin"; fi
same_as "$mandir/man8/imapgate.8" docs/imapgate.8
expect_file "$unitdir/imapgate.service"
same_as "$docdir/examples/imapgate.yaml" config/imapgate.yaml
same_as "$docdir/examples/imapgate-root-keys.conf" docs/imapgate-root-keys.conf
for p in "$src"/config/presets/*.yaml; do
	same_as "$docdir/examples/presets/${p##*/}" "config/presets/${p##*/}"
done
same_as "$docdir/README.md" README.md
for d in "$src"/docs/*.md; do
	same_as "$docdir/${d##*/}" "docs/${d##*/}"
done
if [ -e "$dest$sysconfdir" ]; then
	fail "meson install wrote to $sysconfdir: $(cd "$dest" && find ".$sysconfdir" | head -5 | tr '\n' ' ')"
else
	ok "nothing in $sysconfdir"
fi

# The installed binary runs.
if v=$("$bin" -V 2>&1) && [ -n "$v" ]; then ok "imapgate -V: $v"; else fail "imapgate -V: $v"; fi
if t=$("$bin" -t -c "$src/config/default.yaml" 2>&1); then ok "imapgate -t config/default.yaml: $t"; else fail "imapgate -t config/default.yaml: $t"; fi

# The unit names the installed binary and configuration.
unit=$dest$unitdir/imapgate.service
if [ -f "$unit" ]; then
	for want in "ExecStart=$sbindir/imapgate -c $sysconfdir/imapgate/imapgate.yaml" \
		"ExecStartPre=$sbindir/imapgate -t -c $sysconfdir/imapgate/imapgate.yaml" \
		"ExecReload=$sbindir/imapgate -t -c $sysconfdir/imapgate/imapgate.yaml"; do
		if grep -qxF "$want" "$unit"; then ok "unit: $want"; else fail "unit lacks: $want"; fi
	done
	if command -v systemd-analyze >/dev/null 2>&1; then
		# verify checks that the commands exist: point them into the tree.
		mkdir -p "$dest/verify"
		sed "s|$sbindir/imapgate|$bin|g" "$unit" >"$dest/verify/imapgate.service"
		if out=$(cd "$dest/verify" && MANPATH=$dest$mandir systemd-analyze verify imapgate.service 2>&1); then
			ok "systemd-analyze verify"
		else
			fail "systemd-analyze verify: $out"
		fi
	else
		echo "note: systemd-analyze not found, unit not verified"
	fi
fi

echo "$failures failure(s)"
[ "$failures" -eq 0 ]
