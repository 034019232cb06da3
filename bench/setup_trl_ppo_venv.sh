#!/usr/bin/env bash
# The virtualenv that bench/ppo_vs_trl.py runs TRL's PPO trainer in.
#
# TRL removed its PPO trainer after 1.12.0 (it lives in trl.experimental.ppo
# there), so the PPO comparison needs that exact version, in a venv of its own
# so that it never changes the project's dependencies. torch is installed
# first, pinned to the project's version, so both sides run the same kernels.
#
# Usage: bash bench/setup_trl_ppo_venv.sh [VENV_DIR]   (default: .venv-trl-ppo)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-trl-ppo}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --upgrade pip
# torch first, at the project's version (pip's find-links supply a local CPU wheel where there is one).
"$VENV/bin/pip" install --quiet "torch==2.13.0"
"$VENV/bin/pip" install --quiet "trl==1.12.0"
"$VENV/bin/python" -c "import torch, trl, transformers; from trl.experimental.ppo import PPOTrainer; print('trl', trl.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__)"
