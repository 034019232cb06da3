#!/usr/bin/env bash
# The virtualenv that bench/reward_vs_trl.py runs TRL's RewardTrainer in.
#
# TRL is only needed for the speed comparison, so it lives in a venv of its
# own and never changes the project's dependencies. torch is installed first,
# pinned to the project's version (pip's find-links supply the local CPU wheel
# where there is one), so both sides run the same kernels; then the latest TRL.
#
# Usage: bash bench/setup_trl_venv.sh [VENV_DIR]   (default: .venv-trl)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-trl}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --upgrade pip
"$VENV/bin/pip" install --quiet "torch==2.13.0"
"$VENV/bin/pip" install --quiet trl
"$VENV/bin/python" -c "import torch, trl, transformers; from trl import RewardTrainer, RewardConfig; print('trl', trl.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__)"
