#!/usr/bin/env bash
# The planner against 10-step training runs: ./validate.sh NAME ROW... (rows of
# litespark.bench.planner_accuracy.CONFIGS).  On the GPU host, PYTHONPATH=/tmp/site:$PWD.
set -uo pipefail
name=$1; shift
mkdir -p "${OUT:?}/validate"
python3 -m litespark.bench.planner_accuracy --out-dir "${OUT:?}/validate" --name "$name" --steps 10 --only "$@" \
  > "$OUT/validate/$name.log" 2>&1 || echo "planner_accuracy exit $?"
tail -25 "$OUT/validate/$name.log"
