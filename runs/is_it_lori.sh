#!/usr/bin/env bash
# Is it LoRi that wins, or per-step supervision that any method would win with? 6-step chains mod 10, the shipped
# teacher and the demo's student recipe (configs/chains-lori.yaml: 700 steps x 64, the loss-driven curriculum, K = 6),
# SEEDS training seeds per row; each run evaluated on the 500 test problems as soon as it is trained (tables:
# runs/seed_table.py, runs/necessity_table.py).
# The step-anchor rows keep the anchors alone (no L_rat, no L_anc: they do nothing here, runs/chains_ablation.sh) and
# change only the anchor's target; the LoRi and No-CoT rows are runs/chains_ablation.sh's.
#   bash runs/is_it_lori.sh                          # from the repository root, after `make venv`
#   ROWS="random-r16 token" SEEDS="0" bash runs/is_it_lori.sh    # also: pca-r2 random-r2 (not in the default rows)
# Cost on 2 cores: ~4.5 min per student alone, ~1 min per statistics cache, ~8 min for the values-only teacher;
# finished runs are reused (two streams: OMP_NUM_THREADS=1 and disjoint ROWS).
set -euo pipefail
LORI=${LORI:-.venv/bin/lori}
OUT=${OUT:-out/is-it-lori}
SEEDS=${SEEDS:-"0 1 2"}
ANALYZE_SEEDS=${ANALYZE_SEEDS:-0}   # the seeds whose students get `lori analyze --student` (~35 s each)
ROWS=${ROWS:-"pca-r16 pca-r4 random-r16 random-r4 full-std full-raw token sim-cot coconut values-cot"}
TEACHER=${TEACHER:-src/lori/assets/chains-teacher}
COMMON=(model.init_from=$TEACHER lori.teacher=$TEACHER)
ANCHORS_ONLY="lori.first_order=false lori.second_order=false lori.anchor=false"
declare -A ROW=(
  [pca-r16]="$ANCHORS_ONLY"                                         # the teacher's PCA subspace, rank 16 (default)
  [pca-r4]="$ANCHORS_ONLY lori.rank=4"
  [random-r16]="$ANCHORS_ONLY lori.basis=random"                    # a seeded random orthonormal basis per layer
  [random-r4]="$ANCHORS_ONLY lori.basis=random lori.rank=4"
  [pca-r2]="$ANCHORS_ONLY lori.rank=2"                              # where a subspace could matter: 2 directions
  [random-r2]="$ANCHORS_ONLY lori.basis=random lori.rank=2"
  [full-std]="$ANCHORS_ONLY lori.basis=full"                        # no projection, each direction standardised
  [full-raw]="$ANCHORS_ONLY lori.basis=full lori.step_norm=none"    # plain hidden-state MSE at full width (CCoT)
  # CE of the LM head at the fed state vs step k's value; its language CE stays above the stage rule's 0.02, so its
  # stages are capped like Coconut's (with the demo's 300-step caps it ends in stage 3 of 7)
  [token]="$ANCHORS_ONLY lori.step_target=token curriculum.final_share=0.3"
  # the curriculum methods without step anchors do not pass their stages by loss within 700 steps: their stages are
  # capped so that the final stage (all 6 thoughts) has the last 30% of the budget (lori compare's protocol)
  [sim-cot]="method=sim-cot curriculum.final_share=0.3"            # SIM-CoT's step decoder on Coconut's curriculum
  [coconut]="method=coconut curriculum.final_share=0.3"            # Coconut: the curriculum and the answer's CE only
)
# the subspace is part of the statistics cache's identity: rows that change it get a cache of their own
declare -A CACHE=([pca-r4]=pca-r4 [random-r16]=random-r16 [random-r4]=random-r4 [full-std]=full [full-raw]=full
                  [pca-r2]=pca-r2 [random-r2]=random-r2)
declare -A CACHE_ARGS=([pca-r4]="lori.rank=4" [random-r16]="lori.basis=random" [random-r4]="lori.basis=random lori.rank=4"
                       [full]="lori.basis=full" [pca-r2]="lori.rank=2" [random-r2]="lori.basis=random lori.rank=2")
for row in $ROWS; do
  if [[ $row == values-cot ]]; then    # the shortest honest explicit CoT: `|| 9 9 0 1 3 5 #### 5`, from scratch
    for s in $SEEDS; do               # (its accuracy jumps later than the value form's: 24% at step 900, 79% at 1,000)
      run=$OUT/values-cot-seed$s
      $LORI train configs/chains-cot-sft.yaml data.chain_rationale=values train.steps=2000 out_dir=$run train.seed=$s
      [[ -f $run/eval-test/results.json ]] || $LORI eval "$run"
    done
    continue
  fi
  [[ -v "ROW[$row]" ]] || { echo "unknown row $row; rows: ${!ROW[*]} values-cot" >&2; exit 2; }
  name=${CACHE[$row]:-pca-r16}
  cache=$OUT/cache-$name
  [[ ${ROW[$row]} == *method=* || -f $cache/manifest.json ]] || $LORI precompute configs/chains-lori.yaml \
      "${COMMON[@]}" lori.cache_dir=$cache ${CACHE_ARGS[$name]:-} out_dir=$OUT/precompute-$name
  for s in $SEEDS; do
    run=$OUT/$row-seed$s
    $LORI train configs/chains-lori.yaml "${COMMON[@]}" lori.cache_dir=$cache out_dir=$run train.seed=$s ${ROW[$row]}
    [[ -f $run/eval-test/results.json ]] || $LORI eval "$run"
    # the latent-necessity checks (zeroed, noise, shuffled, swapped, per-step interventions) on 200 validation problems
    [[ " $ANALYZE_SEEDS " != *" $s "* || -f $run/analysis-valid/analysis.json ]] || \
        $LORI analyze "$TEACHER" --student "$run" --data-split valid --n 200 --out "$run/analysis-valid"
  done
done
