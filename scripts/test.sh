#!/usr/bin/env bash
# The README's test command: install everything the tests need on a fresh machine
# (Debian's DICOM peers and chromium, the viewer's npm packages, the Python project
# with torch), then lint, type-check, check the package boundaries and run every
# test, slow and integration ones included. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

debian_packages=(dcmtk orthanc orthanc-dicomweb dicom3tools chromium)
missing=()
for package in "${debian_packages[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -q
  $sudo apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

# The OHIF viewer and playwright-core for tests/viewer (the lock file pins them).
npm ci --prefix tests/viewer --no-audit --no-fund

python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch and torchvision for fine-tuning and the parity tests (MONAI, nnU-Net): these pins come from the
# machine's local wheel store; any other version would download a multi-GB CUDA build.
python -m pip install -q torch==2.14.1 torchvision==0.29.1
python -m pip install -q -e '.[test,postgres,train,import]'

ruff check .
ruff format --check .
mypy
lint-imports
python -m pytest "$@"
