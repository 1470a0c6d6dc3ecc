#!/usr/bin/env bash
# Install the project with its test extras into .venv, then lint, type-check, check the
# package boundaries and run every test (slow and integration ones included).
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch and torchvision for fine-tuning and the parity tests: these pins come from the
# machine's local wheel store; any other version would download a multi-GB CUDA build.
python -m pip install -q torch==2.14.1 torchvision==0.29.1
python -m pip install -q -e '.[test,postgres,train]'

ruff check .
ruff format --check .
mypy
lint-imports
python -m pytest "$@"
