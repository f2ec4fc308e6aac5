#!/usr/bin/env bash
# Installs what `make test` needs when it is missing, or fails with a clear message.
# Never skips silently: a missing tool the tests need is an error.
set -euo pipefail

need_go_minor=26
if ! command -v go >/dev/null 2>&1; then
	echo "make test: Go is not installed (need Go 1.${need_go_minor}+; see https://go.dev/doc/install)" >&2
	exit 1
fi
minor=$(go env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')
if [ "${minor:-0}" -lt "$need_go_minor" ]; then
	echo "make test: Go $(go env GOVERSION) is too old; need Go 1.${need_go_minor}+" >&2
	exit 1
fi

# Debian packages the test suite drives (real peers, no mocks); more as the
# XMPP/web issues land; each entry is "command:package".
apt_needs=("sipp:sip-tester" "baresip:baresip")
# `make bench-sip` adds the reference server: EXTRA_NEEDS="kamailio:kamailio".
read -r -a extra <<<"${EXTRA_NEEDS:-}"
apt_needs+=("${extra[@]}")
missing=()
for entry in "${apt_needs[@]}"; do
	cmd=${entry%%:*}
	pkg=${entry##*:}
	command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
	if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
		echo "make test: missing packages ${missing[*]}: install them (apt-get install -y ${missing[*]}) and retry" >&2
		exit 1
	fi
	echo "make test: installing ${missing[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" || {
		echo "make test: apt-get install ${missing[*]} failed" >&2
		exit 1
	}
fi
