#!/usr/bin/env bash
# 4x4 multiplication without a chain of thought, with Bai et al. 2025's running-sum auxiliary head
# (method aux-sum, configs/mult4x4-aux-sum.yaml), and the No-CoT control with the same model, data, lr schedule and
# budget (aux_sum.weight=0: the same pipeline, the head trains nothing). Test set:
# ../shared/data/multiplication/4x4/test.txt (1,000 problems).
#   bash runs/mult4x4_aux_sum.sh        # from the repository root, after `make venv`; ~1.5 h per student on a core
# The two students are independent: run them one per core with OMP_NUM_THREADS=1 (as measured in docs/results.md).
set -euo pipefail
LORI=${LORI:-.venv/bin/lori}
[ -d out/mult4x4-cot-sft/checkpoints ] || $LORI train configs/mult4x4-cot-sft.yaml
$LORI train configs/mult4x4-aux-sum.yaml
$LORI train configs/mult4x4-aux-sum.yaml aux_sum.weight=0 out_dir=out/mult4x4-aux-sum-w0
# Lower-lr phases from the head run's weights and head (model.init_from), each decided on the validation score
$LORI train configs/mult4x4-aux-sum.yaml model.init_from=out/mult4x4-aux-sum out_dir=out/mult4x4-aux-sum-p2 \
    train.steps=14000 train.lr=2e-4
$LORI train configs/mult4x4-aux-sum.yaml model.init_from=out/mult4x4-aux-sum-p2 out_dir=out/mult4x4-aux-sum-p3 \
    train.steps=10000 train.lr=1e-4
$LORI eval out/mult4x4-aux-sum out/mult4x4-aux-sum-w0 out/mult4x4-aux-sum-p2 out/mult4x4-aux-sum-p3 \
    --out out/mult4x4-aux-sum-eval
.venv/bin/python runs/digit_accuracy.py out/mult4x4-aux-sum-eval/predictions-*.jsonl
.venv/bin/python runs/answer_ce_plot.py "running-sum head=out/mult4x4-aux-sum" "No-CoT control=out/mult4x4-aux-sum-w0" \
    "head, phase 2=out/mult4x4-aux-sum-p2@36000" "head, phase 3=out/mult4x4-aux-sum-p3@50000" \
    --out docs/figures/mult4x4-aux-sum-answer-ce.png
