#!/usr/bin/env bash
# Does the recipe carry to steps of different lengths and multi-token results? The variable-length chains task
# (configs/chainsvar-*.yaml: 4-step chains mod 23 under a digit-wise BPE, steps of 6-7 tokens, results of 1-2):
# the CoT-SFT teacher, a No-CoT student and the LoRi student (hand-overs and thought positions from each example's
# text) over SEEDS seeds, with the same budget, then one evaluation table on the 500 test problems.
#   bash runs/chainsvar.sh                           # from the repository root, after `make venv`
# Cost on 2 cores: teacher ~40 min (5,000 steps), ~2 min of statistics, ~6 min per student alone; finished runs are reused.
set -euo pipefail
LORI=${LORI:-.venv/bin/lori}
OUT=${OUT:-out/chainsvar}
SEEDS=${SEEDS:-"0 1 2"}
TEACHER=$OUT/cot-sft
[[ -d $TEACHER/checkpoints ]] || $LORI train configs/chainsvar-cot-sft.yaml out_dir=$TEACHER
COMMON=(model.init_from=$TEACHER lori.teacher=$TEACHER lori.cache_dir=$OUT/lori-cache)
[[ -f $OUT/lori-cache/manifest.json ]] || $LORI precompute configs/chainsvar-lori.yaml "${COMMON[@]}" out_dir=$OUT/precompute
runs=("$TEACHER")
# the first LoRi seed and the No-CoT control first, each evaluated as soon as it is trained, then the other seeds
first=${SEEDS%% *}
$LORI train configs/chainsvar-lori.yaml "${COMMON[@]}" out_dir=$OUT/lori-seed$first train.seed=$first
$LORI eval "$OUT/lori-seed$first"
$LORI train configs/chainsvar-lori.yaml "${COMMON[@]}" out_dir=$OUT/no-cot-seed0 train.seed=0 method=no-cot \
    curriculum.stages=0
$LORI eval "$OUT/no-cot-seed0"
runs+=("$OUT/lori-seed$first" "$OUT/no-cot-seed0")
for s in ${SEEDS#"$first"}; do
  $LORI train configs/chainsvar-lori.yaml "${COMMON[@]}" out_dir=$OUT/lori-seed$s train.seed=$s
  $LORI eval "$OUT/lori-seed$s"
  runs+=("$OUT/lori-seed$s")
done
$LORI eval "${runs[@]}" --out $OUT/eval
