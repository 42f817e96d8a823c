#!/usr/bin/env bash
# The README's test command: installs what the tests need on a fresh Debian machine (Chromium for the
# page checks, Slurm for the sweep test), then runs every test. `.ci/run` calls this same script.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "cargo not found: install the Rust toolchain (rustup) first" >&2
    exit 1
  fi
fi
cargo --version

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
updated=""
apt_install() {
  if [ -z "$updated" ]; then
    $SUDO apt-get update -q || echo "apt-get update failed; trying the install anyway" >&2
    updated=1
  fi
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

# The report tests open the generated HTML in headless Chromium (Debian's package).
if ! command -v chromium >/dev/null 2>&1; then
  apt_install chromium
fi
chromium --version

# The sweep test submits a job array to a single-node Slurm it starts itself (Debian's packages; the
# packages' own service start fails without an init system, which is harmless).
if ! command -v slurmctld >/dev/null 2>&1 || ! command -v sbatch >/dev/null 2>&1; then
  apt_install slurmctld slurmd slurm-client munge || true
fi
command -v slurmctld >/dev/null && command -v sbatch >/dev/null || {
  echo "Slurm (slurmctld, slurmd, sbatch) could not be installed; the sweep test needs it" >&2
  exit 1
}

# Every test binary runs even when one fails, so one failure does not hide the rest.
cargo test --no-fail-fast "$@"
