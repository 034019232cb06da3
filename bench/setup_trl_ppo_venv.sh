#!/usr/bin/env bash
# The virtualenv bench/ppo_vs_trl.py runs TRL's PPO trainer in. TRL removed that
# trainer after 1.12.0 (where it lives in trl.experimental.ppo), hence the pin.
#
# Usage: bash bench/setup_trl_ppo_venv.sh [VENV_DIR]   (default: .venv-trl-ppo)
set -euo pipefail
exec bash "$(dirname "$0")/setup_trl_venv.sh" "${1:-.venv-trl-ppo}" "trl==1.12.0"
