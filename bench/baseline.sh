#!/usr/bin/env bash
# Installs the Delta Chat JSON-RPC server (the baseline `letstalk-bench` measures
# letstalkd against) into target/bench-baseline/ and prints the binary's path.
# Idempotent: when the binary is already there, nothing is downloaded.
#
# Usage: bench/baseline.sh            (prints the path on stdout, progress on stderr)
#        DELTACHAT_RPC_VERSION=2.x bench/baseline.sh   (pin a version; default: latest)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${CARGO_TARGET_DIR:-$root/target}/bench-baseline"
pkg="@deltachat/stdio-rpc-server-linux-x64"
bin="$dir/node_modules/$pkg/deltachat-rpc-server"

if [[ ! -x "$bin" ]]; then
    command -v npm >/dev/null || { echo "baseline.sh: npm is needed (install Node.js)" >&2; exit 1; }
    mkdir -p "$dir"
    spec="$pkg"
    if [[ -n "${DELTACHAT_RPC_VERSION:-}" ]]; then
        spec="$pkg@$DELTACHAT_RPC_VERSION"
    fi
    echo "baseline.sh: installing $spec into $dir" >&2
    npm install --prefix "$dir" --no-audit --no-fund --loglevel=error "$spec" >&2
fi

if [[ ! -x "$bin" ]]; then
    # The package layout changed: find the binary wherever npm put it.
    found="$(find "$dir/node_modules" -type f -name deltachat-rpc-server -perm -u+x 2>/dev/null | head -n1)"
    [[ -n "$found" ]] || { echo "baseline.sh: deltachat-rpc-server not found under $dir" >&2; exit 1; }
    bin="$found"
fi

echo "$bin"
