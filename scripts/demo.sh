#!/usr/bin/env bash
# The main job on the embedded default data (Fashion-MNIST): installs what is missing, then
# trains, evaluates and writes runs/fmnist/report.md. Rerun to resume after an interruption.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${PYTHON:-python3}" -m unified_latents pipeline --preset fmnist --outdir runs/fmnist "$@"
