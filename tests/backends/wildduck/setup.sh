#!/bin/sh
# Install the WildDuck test backend (wildduck pinned in package.json and
# package-lock.json) into tests/backends/wildduck/node_modules.
# Idempotent: does nothing when node/npm exist and node_modules matches the
# lockfile. Usage: sh tests/backends/wildduck/setup.sh
set -eu

here=$(cd "$(dirname "$0")" && pwd)
stamp="$here/node_modules/.imapgate-lock.sha256"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "setup.sh: installing nodejs and npm with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq nodejs npm >/dev/null
fi

want=$(sha256sum "$here/package-lock.json" "$here/package.json" | sha256sum | cut -d' ' -f1)
have=$(cat "$stamp" 2>/dev/null || true)

if [ "$want" != "$have" ] || [ ! -f "$here/node_modules/wildduck/imap-core/test/test-server.js" ]; then
    echo "setup.sh: npm ci in $here" >&2
    # Install scripts are not needed: they only build optional native
    # accelerators that imap-core does not use.
    (cd "$here" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
    echo "$want" > "$stamp"
fi

# Fail here, not in a test, when the installed engine cannot even load.
node -e "require('$here/node_modules/wildduck/imap-core/index.js')"
