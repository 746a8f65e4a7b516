#!/usr/bin/env bash
# When do latent steps help? The six methods on chains of depth L = 2, 4, 6 (lori.data.chains), one
# `lori compare` per depth (a teacher per seed, then every student from it under the student preset's budget),
# then accuracy against depth and accuracy against generated tokens, one line per method with its interval.
#   bash runs/depth_sweep.sh                       # from the repository root, after `make venv`
#   DEPTHS="2 4 6 8" SEEDS=0,1,2 bash runs/depth_sweep.sh    # L = 8: the teacher gets 1,600 steps
# Cost on 2 CPU cores: about 30 minutes per depth and seed alone (teacher ~5 min, precompute ~1 min, five students
# ~5 min each), so the default (3 depths x 1 seed) is about 1.5 hours; measured here as two one-thread streams beside
# other work: L = 2 and 4 in ~75 min, L = 6 in 76 min. Every finished run is reused when it is run again.
set -euo pipefail
LORI=${LORI:-.venv/bin/lori}
PY=${PY:-.venv/bin/python}
OUT=${OUT:-out/depth}
DEPTHS=${DEPTHS:-"2 4 6"}
SEEDS=${SEEDS:-0}
METHODS=${METHODS:-no-cot,cot-sft,icot-si,coconut,codi,lori}
for L in $DEPTHS; do
  # 2-step chains mod 10 have only 10 x 24 x 20 = 4,800 distinct questions: 4,000 for training beside the
  # 700 held out (the teacher then sees each ~16 times in its 1,000 steps).
  SIZE=(); if [ "$L" -le 2 ]; then SIZE=(data.train_size=4000); fi
  # K = L thoughts for every latent method; CODI as published (no curriculum); iCoT-SI removes one 5-token
  # note per stage; the teacher gets 300 more steps per step beyond 6 (its accuracy jumps later on longer chains).
  $LORI compare --teacher configs/chains-cot-sft.yaml --student configs/chains-lori.yaml \
      --methods "$METHODS" --seeds "$SEEDS" --out "$OUT/L-$L" \
      data.chain_steps=$L teacher.train.steps=$((1000 + (L > 6 ? (L - 6) * 300 : 0))) \
      student.lori.latent_steps=$L student.curriculum.stages=$L student.coconut.latent_steps=$L \
      student.codi.latent_steps=$L codi:curriculum.stages=0 \
      icot-si:curriculum.remove_per_stage=5 "${SIZE[@]}" "$@"
done
$PY runs/depth_plot.py "$OUT"/L-*
