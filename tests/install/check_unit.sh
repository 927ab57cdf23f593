#!/usr/bin/env bash
# docs/imapgate.service against systemd's own scoring:
# `systemd-analyze security --offline=true` must rate its exposure "OK" or
# better (below 5.0: systemd's levels are PERFECT 0, SAFE < 1, OK < 5,
# MEDIUM < 7.5, EXPOSED < 9, UNSAFE < 10, DANGEROUS), and the settings the
# design rests on must be there.  Exit 77 (skip) without systemd-analyze or
# without --offline (systemd < 250).
#
# With DROPIN (docs/imapgate-root-keys.conf), the unit with that drop-in
# must rate OK too.
#
# usage: check_unit.sh UNIT_FILE [DROPIN]
set -uo pipefail

unit=$1 dropin=${2:-}
command -v systemd-analyze >/dev/null 2>&1 || { echo "SKIP: no systemd-analyze"; exit 77; }
work=$(mktemp -d "${TMPDIR:-/tmp}/imapgate-unit.XXXXXX") || exit 1
trap 'rm -rf "$work"' EXIT
cp "$unit" "$work/imapgate.service"
cd "$work" || exit 1
out=$(systemd-analyze security --offline=true --no-pager imapgate.service 2>&1)
rc=$?
if [ "$rc" -ne 0 ] && printf '%s' "$out" | grep -qi 'unrecognized option'; then
	echo "SKIP: systemd-analyze has no --offline"
	exit 77
fi
line=$(printf '%s\n' "$out" | grep 'Overall exposure level')
echo "${line:-no overall exposure line: $out}"
failures=0
case $line in
*" PERFECT"* | *" SAFE"* | *" OK"*) echo "ok: exposure level OK or better" ;;
*) echo "FAIL: exposure must be OK or better"; printf '%s\n' "$out" | grep '✗'; failures=$((failures + 1)) ;;
esac
# --threshold counts in tenths: 49 = 4.9, the top of "OK".
if ! systemd-analyze security --offline=true --threshold=49 imapgate.service >/dev/null 2>&1; then
	echo "FAIL: systemd-analyze security --threshold=49"
	failures=$((failures + 1))
fi
for want in 'User=imapgate' 'AmbientCapabilities=CAP_NET_BIND_SERVICE' \
	'CapabilityBoundingSet=CAP_NET_BIND_SERVICE' 'NoNewPrivileges=yes' \
	'ProtectSystem=strict' 'PrivateTmp=yes' 'Type=notify' \
	'ExecStartPre=/usr/sbin/imapgate -t -c /etc/imapgate/imapgate.yaml' \
	'ExecReload=/usr/sbin/imapgate -t -c /etc/imapgate/imapgate.yaml'; do
	if grep -qxF "$want" imapgate.service; then echo "ok: $want"; else echo "FAIL: missing $want"; failures=$((failures + 1)); fi
done
if [ -n "$dropin" ]; then
	mkdir -p imapgate.service.d
	cp "$dropin" imapgate.service.d/
	line=$(systemd-analyze security --offline=true --no-pager imapgate.service 2>&1 | grep 'Overall exposure level')
	echo "with ${dropin##*/}: $line"
	case $line in
	*" PERFECT"* | *" SAFE"* | *" OK"*) echo "ok: exposure with the drop-in OK or better" ;;
	*) echo "FAIL: exposure with ${dropin##*/} must be OK or better"; failures=$((failures + 1)) ;;
	esac
	# Its CAP_DAC_READ_SEARCH shows as a scored item: the drop-in was read.
	out=$(systemd-analyze security --offline=true --no-pager imapgate.service 2>&1)
	if printf '%s\n' "$out" | grep -q 'CAP_(DAC_.*Service may override'; then
		echo "ok: drop-in applied"
	else
		echo "FAIL: the drop-in was not applied"
		failures=$((failures + 1))
	fi
fi
echo "$failures failure(s)"
[ "$failures" -eq 0 ]
