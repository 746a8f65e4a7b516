#!/usr/bin/env bash
# 4x4 multiplication: the CoT-SFT teacher, No-CoT and LoRi students (same budget, same initialisation), LoRi
# ablations, and one evaluation table on ../shared/data/multiplication/4x4/test.txt. CPU: about an hour on 2 cores.
#   bash runs/mult4x4.sh            # from the repository root, after `make venv`
set -euo pipefail
LORI=${LORI:-.venv/bin/lori}
$LORI train configs/mult4x4-cot-sft.yaml
$LORI precompute configs/mult4x4-lori.yaml
$LORI train configs/mult4x4-no-cot.yaml
$LORI train configs/mult4x4-lori.yaml
# Ablations: the same student and curriculum without the LoRi losses (alpha=0), without the anchor, first-order only,
# second-order only. Same cache (the statistics do not depend on these switches).
$LORI train configs/mult4x4-lori.yaml out_dir=out/mult4x4-lori-alpha0 lori.alpha=0
$LORI train configs/mult4x4-lori.yaml out_dir=out/mult4x4-lori-no-anchor lori.anchor=false
$LORI train configs/mult4x4-lori.yaml out_dir=out/mult4x4-lori-first-order lori.second_order=false
$LORI train configs/mult4x4-lori.yaml out_dir=out/mult4x4-lori-second-order lori.first_order=false
$LORI eval out/mult4x4-cot-sft out/mult4x4-no-cot out/mult4x4-lori out/mult4x4-lori-alpha0 out/mult4x4-lori-no-anchor \
    out/mult4x4-lori-first-order out/mult4x4-lori-second-order --out out/mult4x4-eval
# Per-digit accuracy (a diagnostic for students that get no problem fully right).
.venv/bin/python runs/digit_accuracy.py out/mult4x4-eval/predictions-*.jsonl
