#!/usr/bin/env bash
# Everything a fresh Debian machine (root, Python 3.11) needs, and nothing twice:
# the Fashion-MNIST files from Debian, and a virtualenv in .venv with requirements.txt
# (with --test: requirements-test.txt, the test runners and peer implementations).
set -euo pipefail
cd "$(dirname "$0")"
requirements=requirements.txt
[ "${1:-}" = "--test" ] && requirements=requirements-test.txt
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist
fi
stamp=".venv/.installed-$requirements.sha256"
if [ ! -x .venv/bin/python ] || ! sha256sum --status -c "$stamp" 2>/dev/null; then
  python3 -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r "$requirements"
  sha256sum requirements*.txt > "$stamp"
fi
