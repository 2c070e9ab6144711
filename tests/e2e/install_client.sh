#!/usr/bin/env bash
# Install the pinned Claude Code client for the e2e tests and print its path.
#
#   tests/e2e/install_client.sh        -> prints .../tests/e2e/.client/bin/claude
#
# The client goes into tests/e2e/.client/ (git-ignored). A second run is a
# no-op that only checks `claude --version`. Override the version with
# CLAUDE_CODE_VERSION=2.1.xxx (for trying a newer client; the tests pin this one).
#
# The npm package @anthropic-ai/claude-code is a wrapper; the real program is
# the native binary in the optional dependency @anthropic-ai/claude-code-<platform>,
# which the wrapper's postinstall hard-links over its placeholder. We install the
# platform package explicitly (so an `omit=optional` npm config cannot drop it)
# and point .client/bin/claude straight at its binary, so nothing depends on npm
# running install scripts (newer npm versions warn that it may stop doing so).
set -euo pipefail

VERSION="${CLAUDE_CODE_VERSION:-2.1.328}"
PREFIX="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/.client"
CLAUDE="$PREFIX/bin/claude"

if [[ -x "$CLAUDE" && "$("$CLAUDE" --version 2>/dev/null || true)" == "$VERSION (Claude Code)" ]]; then
  echo "$CLAUDE"
  exit 0
fi

case "$(uname -s)-$(uname -m)" in
  Linux-x86_64)          PLATFORM=linux-x64 ;;
  Linux-aarch64|Linux-arm64) PLATFORM=linux-arm64 ;;
  *) echo "install_client.sh: unsupported platform $(uname -s)-$(uname -m)" >&2; exit 1 ;;
esac
if ldd --version 2>&1 | grep -qi musl; then PLATFORM="$PLATFORM-musl"; fi

mkdir -p "$PREFIX/bin"
[[ -f "$PREFIX/package.json" ]] || echo '{"private": true}' >"$PREFIX/package.json"
npm install --prefix "$PREFIX" --save-exact --ignore-scripts --no-audit --no-fund \
  --loglevel=error --engine-strict=false \
  "@anthropic-ai/claude-code@$VERSION" "@anthropic-ai/claude-code-$PLATFORM@$VERSION" >&2

ln -sfn "../node_modules/@anthropic-ai/claude-code-$PLATFORM/claude" "$CLAUDE"
got="$("$CLAUDE" --version)"
if [[ "$got" != "$VERSION (Claude Code)" ]]; then
  echo "install_client.sh: expected '$VERSION (Claude Code)', $CLAUDE printed '$got'" >&2
  exit 1
fi
echo "$CLAUDE"
