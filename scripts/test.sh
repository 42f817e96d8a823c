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
# CI's checkout is thrown away after the run and its disk can be small: the test build (~2 GB) is not
# needed by what follows, torch's venv (~6 GB) is.
if [ -n "${CI:-}" ]; then rm -rf target/debug; fi

# The Python package: build its abi3 wheel with maturin, install it into a fresh venv (no Rust
# needed there) and run its tests.
if [ $# -eq 0 ]; then
  build=python/.venv-build
  venv=python/.venv
  tl2=python/.venv-tl2
  tl4=python/.venv-tl4
  # No pip cache: torch and its CUDA libraries are several GB, and a cached copy beside the
  # installed one can fill a small disk.
  pip_install() { "$1/bin/pip" install -q --disable-pip-version-check --no-cache-dir "${@:2}"; }
  rm -rf "$build" "$venv" "$tl2" "$tl4" target/wheels
  python3 -m venv "$build"
  pip_install "$build" "maturin>=1.16,<2"
  (cd python && "../$build/bin/maturin" build --release -o ../target/wheels)
  wheel=$(ls target/wheels/groklens-*.whl)
  # The package on its own: a fresh venv with the wheel, no Rust, no torch.
  python3 -m venv "$venv"
  pip_install "$venv" "pytest>=7" "$wheel"
  (cd python/tests && "../../$venv/bin/python" -m pytest -q test_api.py) || status=$?
  # TransformerLens interop, once per generation: 2.18 (HookedTransformer) with torch in its venv,
  # then 4.3 (TransformerBridge) in a second venv that shares the first one's torch.
  python3 -m venv "$tl2"
  # (With a Jupyter kernel and plotly: the example notebook runs there, headless, under both.)
  pip_install "$tl2" "pytest>=7" "torch==2.15.*" "transformer-lens==2.18.0" "pyarrow==21.*" \
    nbclient ipykernel plotly "$wheel"
  (cd python/tests && "../../$tl2/bin/python" -m pytest -q test_interop.py test_notebook.py) || status=$?
  python3 -m venv "$tl4"
  site=$("$tl2/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo "$site" > "$("$tl4/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/zz-shared-torch.pth"
  pip_install "$tl4" "pytest>=7" "transformer-lens==4.3.0" "$wheel"
  (cd python/tests && "../../$tl4/bin/python" -m pytest -q test_interop.py test_notebook.py) || status=$?
fi
exit $status
