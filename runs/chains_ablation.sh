#!/usr/bin/env bash
# Do the LoRi terms help? Students of the demo's task (6-step chains mod 10) from the shipped teacher, the demo's
# student recipe (configs/chains-lori.yaml) with one switch changed per row, then one evaluation table on the 500
# test problems. Rows with SEEDS seeds decide the question; the others are one-seed probes.
#   bash runs/chains_ablation.sh                    # from the repository root, after `make venv`
#   SEEDS="0 1 2" ROWS="full alpha0" bash runs/chains_ablation.sh
# Cost: ~6-9 min per LoRi-style student and ~3 min per No-CoT on 2 cores; finished runs are reused.
set -euo pipefail
LORI=${LORI:-.venv/bin/lori}
OUT=${OUT:-out/chains-ablation}
SEEDS=${SEEDS:-"0 1 2"}
ROWS=${ROWS:-"full alpha0 no-step-anchors step-anchors-only pause no-cot"}
TEACHER=${TEACHER:-src/lori/assets/chains-teacher}   # or out/chains-cot-sft after `lori train configs/chains-cot-sft.yaml`
COMMON=(model.init_from=$TEACHER lori.teacher=$TEACHER lori.cache_dir=$OUT/cache)
$LORI precompute configs/chains-lori.yaml "${COMMON[@]}" out_dir=$OUT/precompute
declare -A ROW=(
  [full]=""                                                           # the demo's LoRi student
  [alpha0]="lori.alpha=0"                                             # no LoRi term: the curriculum alone (Coconut-like)
  [no-step-anchors]="lori.step_anchors=false"                         # L_rat + L_anc only (the method as first built)
  [step-anchors-only]="lori.first_order=false lori.second_order=false lori.anchor=false"
  [pause]="lori.projector=pause"                                      # nothing fed back: pause tokens
  [no-cot]="method=no-cot curriculum.stages=0"
)
runs=()
for row in $ROWS; do
  seeds=$SEEDS
  case $row in full|alpha0|no-cot) ;; *) seeds=${SEEDS%% *} ;; esac   # one-seed probes
  for s in $seeds; do
    $LORI train configs/chains-lori.yaml "${COMMON[@]}" out_dir=$OUT/$row-seed$s train.seed=$s ${ROW[$row]}
    runs+=("$OUT/$row-seed$s")
  done
done
$LORI eval "${runs[@]}" --out $OUT/eval
