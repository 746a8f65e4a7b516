#!/usr/bin/env bash
# Does the recipe carry to steps of different lengths and multi-token results? The variable-length chains task
# (configs/chainsvar-*.yaml: 4-step chains mod 23 under a digit-wise BPE, steps of 6-7 tokens, results of 1-2):
# the CoT-SFT teacher, a No-CoT student and the LoRi student (hand-overs and thought positions from each example's
# text) over SEEDS seeds, with the same budget, then one evaluation table on the 500 test problems.
#   bash runs/chainsvar.sh                           # from the repository root, after `make venv`
# Cost on 2 cores: teacher ~15 min, ~1 min of statistics, ~6-10 min per student; finished runs are reused.
set -euo pipefail
LORI=${LORI:-.venv/bin/lori}
OUT=${OUT:-out/chainsvar}
SEEDS=${SEEDS:-"0 1 2"}
TEACHER=$OUT/cot-sft
[[ -d $TEACHER/checkpoints ]] || $LORI train configs/chainsvar-cot-sft.yaml out_dir=$TEACHER
COMMON=(model.init_from=$TEACHER lori.teacher=$TEACHER lori.cache_dir=$OUT/lori-cache)
[[ -f $OUT/lori-cache/manifest.json ]] || $LORI precompute configs/chainsvar-lori.yaml "${COMMON[@]}" out_dir=$OUT/precompute
runs=("$TEACHER")
for s in $SEEDS; do
  $LORI train configs/chainsvar-lori.yaml "${COMMON[@]}" out_dir=$OUT/lori-seed$s train.seed=$s
  runs+=("$OUT/lori-seed$s")
done
$LORI train configs/chainsvar-lori.yaml "${COMMON[@]}" out_dir=$OUT/no-cot-seed0 train.seed=0 method=no-cot \
    curriculum.stages=0
runs+=("$OUT/no-cot-seed0")
$LORI eval "${runs[@]}" --out $OUT/eval
