#!/usr/bin/env bash
# Tokenize SlimPajama with a Slurm array job, then merge the shards with a dependent job.
#
#   INPUT=/data/SlimPajama-627B/train TOKENIZER=/models/llama2/tokenizer.model OUTPUT=/data/slimpajama_train \
#     bash slurm/tokenize_slimpajama.sh           # submits both jobs and prints their ids
#
# Array task i of N tokenizes a contiguous 1/N of the input, balanced by size (--shard i/N; an
# uncompressed file is split at --chunk-bytes boundaries, so one large file feeds many tasks) into
# OUTPUT.shard<i>; the merge job concatenates the shards in order into OUTPUT.bin/.idx, which equals a
# single run byte for byte.  A task that is requeued or rerun resumes from its committed parts.  Every
# value below can be set from the environment.
set -euo pipefail
INPUT=${INPUT:?set INPUT to the SlimPajama split directory (or a glob / @list file)}
TOKENIZER=${TOKENIZER:?set TOKENIZER to the SentencePiece .model or the Hugging Face tokenizer directory}
OUTPUT=${OUTPUT:?set OUTPUT to the output prefix}
TASKS=${TASKS:-16}                     # array size
CPUS=${CPUS:-32}                       # CPUs per array task
MERGE_CPUS=${MERGE_CPUS:-2}            # CPUs of the merge job
WORKERS=${WORKERS:-$CPUS}              # encoder processes per task
PARTITION=${PARTITION:-}               # empty: the cluster's default partition
PYTHON=${PYTHON:-python}
# Inside a job the script runs from Slurm's spool copy: the repository comes from the submitting shell.
HERE=${LITESPARK_HOME:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
export LITESPARK_HOME=$HERE

part=()
[ -n "$PARTITION" ] && part=(--partition "$PARTITION")

case "${1:-submit}" in
  submit)
    array=$(sbatch --parsable "${part[@]}" --job-name=tokenize --array=0-$((TASKS - 1)) --cpus-per-task="$CPUS" \
      --output="${OUTPUT}.shard%a.log" --export=ALL "$0" task)
    merge=$(sbatch --parsable "${part[@]}" --job-name=tokenize-merge --dependency=afterok:"$array" \
      --cpus-per-task="$MERGE_CPUS" --output="${OUTPUT}.merge.log" --export=ALL "$0" merge)
    echo "array job $array ($TASKS tasks), merge job $merge"
    ;;
  task)
    i=${SLURM_ARRAY_TASK_ID:?task mode runs inside a Slurm array}
    n=${SLURM_ARRAY_TASK_COUNT:-$TASKS}
    exec "$PYTHON" "$HERE/data_prep/tokenize_slimpajama.py" --input "$INPUT" --tokenizer "$TOKENIZER" \
      --output-prefix "${OUTPUT}.shard${i}" --shard "${i}/${n}" --workers "$WORKERS" --no-progress
    ;;
  merge)
    shards=()
    for ((i = 0; i < TASKS; i++)); do shards+=("${OUTPUT}.shard${i}"); done
    exec "$PYTHON" "$HERE/data_prep/merge_indexed.py" --inputs "${shards[@]}" --output-prefix "$OUTPUT"
    ;;
  *)
    echo "usage: $0 [submit|task|merge]" >&2
    exit 2
    ;;
esac
