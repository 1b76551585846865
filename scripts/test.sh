#!/usr/bin/env bash
# The test suite as CI runs it: every test in file order (pytest-randomly is off in pyproject's addopts), then
# the tests not marked slow again in a random order, which finds tests that lean on what an earlier one left
# behind. pytest-randomly prints the order's seed; `python -m pytest -p randomly -p randomly --randomly-seed=N`
# repeats it. Arguments go to both runs.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pytest "$@"
python -m pytest -p randomly -m "not slow" "$@"
