#!/usr/bin/env bash
# Install the programs the test suite uses besides Python packages, so that the README's test
# command passes on a fresh Debian machine:
#
#   tinyproxy   a real forward proxy (tests/fakes/proxy.py, the Jamf proxy tests)
#   promtool    from Debian's prometheus package: checks and unit-tests the generated alert rules
#               (the tests never start the service)
#   openssl     makes the test certificates and verifies signed profiles
#   curl        the README's S3 example waits for its server with it
#   npm         installs the pinned Claude Code client for the end-to-end tests
#               (tests/e2e/install_client.sh, run here too)
#   otelcol     the real OpenTelemetry Collector the generated config runs on, built from the Go
#               module proxy by tests/collector/build.sh (run here; needs Go 1.26, not a Debian
#               package; a few minutes cold, seconds once Go's caches are warm)
#
# As root with apt-get, it installs what is missing (one apt-get update, nothing when all are
# there). Otherwise it installs nothing and says what is missing: the tests that need a missing
# program then skip with one reason, or fail when the CI variable is set. It fails only under CI,
# where a missing program is a broken setup.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

packages=()
command -v tinyproxy >/dev/null || packages+=(tinyproxy)
command -v promtool >/dev/null || packages+=(prometheus)
command -v openssl >/dev/null || packages+=(openssl)
command -v curl >/dev/null || packages+=(curl)
command -v npm >/dev/null || packages+=(npm)

complain() {
  echo "tests/install-tools.sh: $*" >&2
  if [[ -n "${CI:-}" ]]; then exit 1; fi
}

if ((${#packages[@]})); then
  if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null; then
    complain "not installing the Debian packages ${packages[*]} (this needs root and apt-get);" \
      "the tests that need them will be skipped"
  else
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -qq && apt-get install -y -qq "${packages[@]}" >/dev/null; } \
      || complain "apt-get could not install ${packages[*]}; the tests that need them will be skipped"
  fi
fi

# The pinned client (idempotent: a no-op once installed). The e2e tests run only as root.
if [[ "$(id -u)" == 0 ]] && command -v npm >/dev/null; then
  bash tests/e2e/install_client.sh >/dev/null \
    || complain "could not install the Claude Code client; the end-to-end tests will be skipped"
fi

# The real OpenTelemetry Collector (idempotent: nothing to do when the binary is up to date).
if command -v go >/dev/null; then
  bash tests/collector/build.sh >/dev/null \
    || complain "could not build the OpenTelemetry Collector (tests/collector/build.sh);" \
      "the tests that run it will be skipped"
else
  complain "go is not installed, so the OpenTelemetry Collector is not built (tests/collector/build.sh);" \
    "the tests that run it will be skipped"
fi
