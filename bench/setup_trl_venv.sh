#!/usr/bin/env bash
# A virtualenv of its own for the TRL side of a speed comparison.
#
# TRL is only needed by the benchmarks, so it never enters the project's
# dependencies. torch is installed first, pinned to the project's version
# (pip's find-links supply the local CPU wheel where there is one), so both
# sides run the same kernels; then TRL at the version asked for.
#
# Usage: bash bench/setup_trl_venv.sh [VENV_DIR] [TRL_SPEC]
#   defaults: .venv-trl, the latest trl (RewardTrainer, for bench/reward_vs_trl.py)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-trl}"
TRL_SPEC="${2:-trl}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --upgrade pip
"$VENV/bin/pip" install --quiet "torch==2.13.0"
"$VENV/bin/pip" install --quiet "$TRL_SPEC"
"$VENV/bin/python" -c "import torch, trl, transformers; print('trl', trl.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__)"
