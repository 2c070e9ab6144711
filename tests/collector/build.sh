#!/usr/bin/env bash
# Build the real OpenTelemetry Collector the tests run (tests/collector/main.go, versions pinned in
# go.mod/go.sum) into tests/collector/.bin/otelcol-mdmgen, and print its path on the last line.
#
# Go's own module and build caches (the default GOPATH and GOCACHE) are reused, so a second build,
# or one from another clone on this machine, takes seconds; a cold one downloads the modules from
# the Go module proxy and compiles for a few minutes. Nothing is done when the binary is newer than
# go.mod, go.sum and main.go. Needs Go 1.26 (the go line of go.mod).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
binary="$here/.bin/otelcol-mdmgen"

fresh=1
if [[ -x "$binary" ]]; then
  for source in "$here/go.mod" "$here/go.sum" "$here/main.go"; do
    [[ "$binary" -nt "$source" ]] || fresh=0
  done
else
  fresh=0
fi

if ((!fresh)); then
  command -v go >/dev/null || { echo "tests/collector/build.sh: go is not installed" >&2; exit 1; }
  mkdir -p "$here/.bin"
  # Built to a temporary name and renamed, so an interrupted build never leaves a binary that
  # looks fresh. -mod=readonly: go.mod and go.sum are the pins, never rewritten here; -buildvcs=false:
  # the binary does not depend on the checkout's commit (nor need git).
  (cd "$here" && CGO_ENABLED=0 go build -trimpath -buildvcs=false -mod=readonly -o "$binary.tmp" .)
  mv -f "$binary.tmp" "$binary"
fi
echo "$binary"
