#!/usr/bin/env bash
# Installs what building and testing flowgate needs, idempotently and quietly when all is there.
# Called by `make demo`, `make test` and `make bench`; safe to run any number of times.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'bootstrap: %s\n' "$*"; }

if ! command -v cargo >/dev/null 2>&1; then
  say "cargo is not installed: install Rust with rustup (https://rustup.rs) and re-run" >&2
  exit 1
fi

# rust-toolchain.toml pins the toolchain; make sure it and its components are present.
toolchain=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
if command -v rustup >/dev/null 2>&1; then
  if ! rustup toolchain list | grep -q "^${toolchain}"; then
    say "installing Rust ${toolchain}"
    rustup toolchain install "${toolchain}" --profile minimal --component rustfmt,clippy
  fi
  installed=$(rustup component list --installed --toolchain "${toolchain}")
  for component in rustfmt clippy; do
    if ! grep -q "^${component}" <<<"${installed}"; then
      say "adding ${component} to ${toolchain}"
      rustup component add "${component}" --toolchain "${toolchain}"
    fi
  done
fi
