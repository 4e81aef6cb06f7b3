#!/usr/bin/env bash
# The GPU check as one command from the repository root: bash benchmarks/gpu_check.sh [--out DIR] [--dry]
cd "$(dirname "$0")/.." && exec "${PYTHON:-python3}" benchmarks/gpu_check.py "$@"
