#!/usr/bin/env bash
# 4x4 multiplication with the authors' schedule shape at CPU scale. iCoT-SI removes one rationale token
# per stage (configs/mult4x4-icot-si.yaml); Coconut and LoRi get the same model (the teacher's weights), budget,
# lr, clipping, optimizer resets and loss-driven stage rule, with their own curriculum unit (a rationale step per
# stage, K = 4 thoughts). Test set: ../shared/data/multiplication/4x4/test.txt (1,000 problems).
#   bash runs/mult4x4_schedules.sh          # from the repository root, after `make venv`; hours on 2 cores
# STEPS overrides the budget of all three students (default: the iCoT-SI preset's train.steps).
set -euo pipefail
LORI=${LORI:-.venv/bin/lori}
STEPS=${STEPS:-}
budget=${STEPS:+train.steps=$STEPS}
$LORI train configs/mult4x4-cot-sft.yaml
$LORI train configs/mult4x4-icot-si.yaml $budget
# The same schedule for the latent students: curriculum stage k turns the first k of the 4 partial-product steps
# into k thoughts (steps_per_stage and advance_below as in the iCoT-SI preset), then all 4 (K = 4).
LATENT="curriculum.stages=3 coconut.latent_steps=4 lori.latent_steps=4"
$LORI train configs/mult4x4-icot-si.yaml method=coconut out_dir=out/mult4x4-coconut-sched $LATENT $budget
$LORI precompute configs/mult4x4-lori.yaml
$LORI train configs/mult4x4-icot-si.yaml method=lori out_dir=out/mult4x4-lori-sched $LATENT $budget \
    lori.teacher=out/mult4x4-cot-sft lori.cache_dir=out/mult4x4-lori-cache lori.rank=16 lori.calib_size=2000 \
    lori.projector=identity lori.step_anchors=true
$LORI eval out/mult4x4-cot-sft out/mult4x4-icot-si out/mult4x4-coconut-sched out/mult4x4-lori-sched \
    --out out/mult4x4-sched-eval
.venv/bin/python runs/digit_accuracy.py out/mult4x4-sched-eval/predictions-*.jsonl
.venv/bin/python runs/answer_ce_plot.py out/mult4x4-icot-si out/mult4x4-coconut-sched out/mult4x4-lori-sched \
    --out docs/figures/mult4x4-sched-answer-ce.png
