#!/usr/bin/env bash
# Do the LoRi terms help? Students of the demo's task (6-step chains mod 10) from the shipped teacher, the demo's
# student recipe (configs/chains-lori.yaml) with one switch changed per row, then one evaluation table on the 500
# test problems. Rows with SEEDS seeds decide the question; the others are one-seed probes.
#   bash runs/chains_ablation.sh                    # from the repository root, after `make venv`
#   SEEDS="0 1 2" ROWS="full alpha0" bash runs/chains_ablation.sh
# Cost: ~5-9 min per LoRi-style student and ~3 min per No-CoT on 2 cores, ~1 min per extra statistics cache
# (rows that change the subspace: rank, shared basis); finished runs are reused.
set -euo pipefail
LORI=${LORI:-.venv/bin/lori}
OUT=${OUT:-out/chains-ablation}
SEEDS=${SEEDS:-"0 1 2"}
ROWS=${ROWS:-"full alpha0 codi no-cot no-step-anchors step-anchors-only pause rank2 rank4 rank8 rank32 k3 k9 shared-basis"}
DECIDING=${DECIDING:-"full alpha0 codi no-cot"}   # the rows that get every seed
TEACHER=${TEACHER:-src/lori/assets/chains-teacher}   # or out/chains-cot-sft after `lori train configs/chains-cot-sft.yaml`
COMMON=(model.init_from=$TEACHER lori.teacher=$TEACHER)
declare -A ROW=(
  [full]=""                                                           # the demo's LoRi student
  [alpha0]="lori.alpha=0"                                             # no LoRi term: the curriculum alone (Coconut-like)
  [codi]="method=codi curriculum.stages=0 codi.latent_steps=6"        # CODI as published: self-distillation, no curriculum
  [no-cot]="method=no-cot curriculum.stages=0"
  [no-step-anchors]="lori.step_anchors=false"                         # L_rat + L_anc only (the method as first built)
  [step-anchors-only]="lori.first_order=false lori.second_order=false lori.anchor=false"
  [pause]="lori.projector=pause"                                      # nothing fed back: pause tokens
  [rank2]="lori.rank=2" [rank4]="lori.rank=4" [rank8]="lori.rank=8" [rank32]="lori.rank=32"   # default 16
  [k3]="lori.latent_steps=3"                                          # K below L = 6 (the final stage's thoughts)
  [k9]="lori.latent_steps=9"                                          # K above L
  [shared-basis]="lori.shared_basis=true"                             # one hidden-mode basis for all layers
)
# The subspace settings are part of the statistics cache's identity: those rows get a cache of their own.
declare -A CACHE=([rank2]=rank2 [rank4]=rank4 [rank8]=rank8 [rank32]=rank32 [shared-basis]=shared-basis)
runs=()
for row in $ROWS; do
  [[ -v "ROW[$row]" ]] || { echo "unknown row $row; rows: ${!ROW[*]}" >&2; exit 2; }
  cache=$OUT/cache${CACHE[$row]:+-${CACHE[$row]}}
  cache_args=(lori.cache_dir=$cache)
  # (No-CoT and CODI read no teacher statistics)
  [[ ${ROW[$row]} == *method=* || -f $cache/manifest.json ]] || $LORI precompute configs/chains-lori.yaml "${COMMON[@]}" "${cache_args[@]}" \
      ${CACHE[$row]:+${ROW[$row]}} out_dir=$OUT/precompute-${CACHE[$row]:-default}
  seeds=$SEEDS
  [[ " $DECIDING " == *" $row "* ]] || seeds=${SEEDS%% *}   # one-seed probes
  for s in $seeds; do
    $LORI train configs/chains-lori.yaml "${COMMON[@]}" "${cache_args[@]}" out_dir=$OUT/$row-seed$s train.seed=$s \
        ${ROW[$row]}
    runs+=("$OUT/$row-seed$s")
  done
done
$LORI eval "${runs[@]}" --out $OUT/eval
