#!/usr/bin/env bash
# Build (when missing or older than its sources) the fast Go SMSC simulator the benchmark
# uses, and optionally run it.
#
#   infra/smsc-bench/build.sh            build if needed; prints one line
#   infra/smsc-bench/build.sh run ARGS   build if needed, then exec the simulator with ARGS
#
#   SMSC_BENCH_BIN   where the binary goes (default infra/smsc-bench/.cache/smsc-bench)
#
# Standard library only: builds offline (GOPROXY=off, GOTOOLCHAIN=local, no cgo). GOCACHE
# falls back to infra/smsc-bench/.cache/go-build when Go's default one is unusable.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BIN="${SMSC_BENCH_BIN:-$HERE/.cache/smsc-bench}"
say() { printf '[smsc-bench] %s\n' "$*" >&2; }

stale() {
  [[ ! -x "$BIN" ]] && return 0
  local src
  for src in "$HERE/main.go" "$HERE/go.mod"; do
    [[ "$src" -nt "$BIN" ]] && return 0
  done
  return 1
}

if stale; then
  if ! command -v go >/dev/null 2>&1; then
    say "cannot build $BIN: the Go toolchain ('go') is not on PATH; install Go >= 1.19 (Debian: apt-get install golang-go), then run 'make smsc-bench'"
    exit 1
  fi
  mkdir -p "$(dirname "$BIN")"
  export GOFLAGS="-mod=mod -buildvcs=false" GOPROXY=off GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0
  if [[ -z "${GOCACHE:-}" ]]; then
    cache="$(go env GOCACHE 2>/dev/null || true)"
    if [[ -z "$cache" || "$cache" == off ]] || ! mkdir -p "$cache" 2>/dev/null || [[ ! -w "$cache" ]]; then
      export GOCACHE="$HERE/.cache/go-build"
    fi
  fi
  tmp="$BIN.tmp.$$"
  trap 'rm -f "$tmp"' EXIT
  if ! (cd "$HERE" && go build -trimpath -o "$tmp" .) >&2; then
    say "go build failed in $HERE (see above)"
    exit 1
  fi
  mv -f "$tmp" "$BIN"  # atomic: concurrent builds never run a half-written binary
  trap - EXIT
  say "built $BIN ($(go env GOVERSION))"
else
  say "up to date: $BIN"
fi

if [[ "${1:-}" == run ]]; then
  shift
  exec "$BIN" "$@"
fi
