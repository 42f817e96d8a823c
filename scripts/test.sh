#!/usr/bin/env bash
# The README's test command: installs what the tests need on a fresh Debian machine (Chromium for the
# page checks, Slurm for the sweep test, a Python venv with maturin and pytest for the Python
# package), then runs every test: Rust, then Python. `.ci/run` calls this same script.
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
status=0
cargo test --no-fail-fast "$@" || status=$?

# The Python package: build its abi3 wheel with maturin, install it into a fresh venv (no Rust
# needed there) and run its tests.
if [ $# -eq 0 ]; then
  build=python/.venv-build
  venv=python/.venv
  rm -rf "$build" "$venv" target/wheels
  python3 -m venv "$build"
  "$build/bin/pip" install -q --disable-pip-version-check "maturin>=1.16,<2"
  (cd python && "../$build/bin/maturin" build --release -o ../target/wheels)
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "pytest>=7" target/wheels/groklens-*.whl
  (cd python/tests && "../../$venv/bin/python" -m pytest -q .) || status=$?
fi
exit $status
