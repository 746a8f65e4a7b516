#!/usr/bin/env bash
# When do latent steps help, and does LoRi help more than the others? Every method on chains of depth L under
# `lori compare`'s protocol (one budget, curricula finished inside it, the best final-stage validation checkpoint,
# sanity checks; docs/evaluation.md), each with its recipe tuned once on validation at L = TUNE_L (runs/chains_grid.yaml,
# `lori tune`), SEEDS training seeds, then accuracy against depth (runs/depth_plot.py).
#   bash runs/depth_sweep.sh                               # tune, the sanity gates, then DEPTHS; finished runs reused
#   DEPTHS="1 2" bash runs/depth_sweep.sh                  # land a few depths per sitting
#   VARIANTS="k-half back-ref mod23" DEPTHS="" bash runs/depth_sweep.sh
# Gates (runs/sanity_gate.py; the sweep stops when one fails): No-CoT >= 95% at L = 1 and on the `+-`-only control at
# L = 6 (a budget that cannot teach a lookup or a sum decides nothing: raise student.train.steps), teachers >= 99%.
# m = 10 has only 200 / 4,800 distinct questions at L = 1 / 2, so those depths use m = 97 / 23 (chance 1 / m).
# Cost on 2 cores: ~5 min per 700-step student and per teacher alone; the tuning is 24 students (~2 h), each depth
# 3 teachers + 18 students (~1.7 h); run as two one-thread streams and land depths as they finish.
set -euo pipefail
LORI=${LORI:-.venv/bin/lori}
PY=${PY:-.venv/bin/python}
OUT=${OUT:-out/depth}
DEPTHS=${DEPTHS-"1 2 3 4 6 8 12"}
SEEDS=${SEEDS:-0,1,2}
METHODS=${METHODS:-no-cot,cot-sft,icot-si,coconut,codi,sim-cot,lori}
TUNE_L=${TUNE_L:-6}
VARIANTS=${VARIANTS:-}
NOCOT_MIN=${NOCOT_MIN:-0.95}
TEACHER_MIN=${TEACHER_MIN:-0.99}
EXTRA=(${EXTRA:-})   # overrides for every run after the sweep's own (tests shrink the model and data with them)
PRESETS=(--teacher configs/chains-cot-sft.yaml --student configs/chains-lori.yaml)
RECIPES=$OUT/tune/recipes.yaml

modulus() { case $1 in 1) echo 97 ;; 2) echo 23 ;; *) echo 10 ;; esac; }

# The overrides of one comparison at depth L with K thoughts (K = L, or L/2: a group of one thought per two steps)
# and modulus M: the teacher gets 300 more steps per step beyond 6 and room to write its L notes; every latent method
# has K thoughts at the teacher's result positions (CODI runs without a curriculum, as published: codi_args).
depth_args() {
  local L=$1 K=$2 M=$3 per=$(($1 / $2))
  local size=()
  [[ $L == 1 ]] && size=(data.train_size=18000)    # of 18,818 distinct questions at m = 97
  echo data.chain_steps="$L" data.chain_modulus="$M" eval.max_new_tokens=$((5 * L + 8 > 48 ? 5 * L + 8 : 48)) \
    teacher.train.steps=$((1000 + (L > 6 ? (L - 6) * 300 : 0))) student.curriculum.stages=$((L / per)) \
    student.curriculum.steps_per_group=$per student.curriculum.thought_offset=$((2 + 5 * (per - 1))) \
    student.curriculum.thought_stride=$((5 * per)) student.lori.latent_steps="$K" student.coconut.latent_steps="$K" \
    student.codi.latent_steps="$K" student.sim_cot.latent_steps="$K" "${size[@]}"
}

codi_args() { [[ ,$1, == *,codi,* ]] && echo codi:curriculum.stages=0 || true; }  # METHODS -> CODI as published

compare() {  # OUT_DIR METHODS OVERRIDES...
  local out=$1 methods=$2
  shift 2
  $LORI compare "${PRESETS[@]}" --methods "$methods" --seeds "$SEEDS" --out "$out" --recipes "$RECIPES" "$@" \
      $(codi_args "$methods") "${EXTRA[@]}"
}

# 1. each method's recipe, chosen on validation at one depth with one seed (the teacher is trained there too)
tuned=$(echo "$METHODS" | tr ',' '\n' | grep -v '^cot-sft$' | paste -sd,)
[[ -f $RECIPES ]] || $LORI tune "${PRESETS[@]}" --methods "$tuned" --grid runs/chains_grid.yaml --out "$OUT/tune" \
    $(depth_args "$TUNE_L" "$TUNE_L" "$(modulus "$TUNE_L")") $(codi_args "$tuned") "${EXTRA[@]}"

# 2. the gates: No-CoT must learn a lookup (L = 1) and a sum (+- only) within the budget
compare "$OUT/L-1" no-cot,cot-sft $(depth_args 1 1 97)
$PY runs/sanity_gate.py "$OUT/L-1/results.json" --method no-cot --min "$NOCOT_MIN" --teacher-min "$TEACHER_MIN"
compare "$OUT/control-plus-minus" no-cot,cot-sft $(depth_args 6 6 10) data.chain_ops=+-
$PY runs/sanity_gate.py "$OUT/control-plus-minus/results.json" --method no-cot --min "$NOCOT_MIN" \
    --teacher-min "$TEACHER_MIN"

# 3. every method at every depth
for L in $DEPTHS; do
  compare "$OUT/L-$L" "$METHODS" $(depth_args "$L" "$L" "$(modulus "$L")")
done
[[ -z $DEPTHS ]] || $PY runs/depth_plot.py "$OUT"/L-*

# 4. K = L/2, the one place a latent student can beat every explicit CoT on sequential passes; harder L = 6 tasks
for v in $VARIANTS; do
  case $v in
    k-half) for L in 4 8; do
              compare "$OUT/k-half-L-$L" cot-sft,coconut,codi,sim-cot,lori $(depth_args "$L" $((L / 2)) 10)
            done ;;
    back-ref) compare "$OUT/back-ref-L-6" "$METHODS" $(depth_args 6 6 10) data.chain_back_ref=0.5 ;;
    mod23) compare "$OUT/mod23-L-6" "$METHODS" $(depth_args 6 6 23) ;;
    *) echo "unknown variant $v (k-half, back-ref, mod23)" >&2; exit 2 ;;
  esac
done
