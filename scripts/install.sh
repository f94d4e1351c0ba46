#!/usr/bin/env bash
# Install pocketlm and its test/optional extras into the active Python environment.
# torch comes first, from its CPU build; constraints.txt then pins it for every later pip call
# (anything that admits a newer torch would pull several GB of CUDA packages).
# Set POCKETLM_EXTRAS (default "test,lmeval,mergekit,ctensors") to choose extras; add llamacpp for llama.cpp (~5 min build).
set -euo pipefail
cd "$(dirname "$0")/.."
pip install -q torch==2.13.0
pip install -q -c constraints.txt -e ".[${POCKETLM_EXTRAS:-test,lmeval,mergekit,ctensors}]"
