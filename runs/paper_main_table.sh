#!/usr/bin/env bash
# The paper's main table on GPUs: for each backbone, a CoT-SFT teacher and a LoRi student on GSM8k-Aug, both
# evaluated on GSM8K, GSM8K-Hard and SVAMP (accuracy, generated tokens, latency) -> out/paper/main_table.md.
#
#   runs/paper_main_table.sh                                   # all four backbones
#   runs/paper_main_table.sh qwen2.5-0.5b llama3.2-1b          # a subset (names of configs/paper/NAME-*.yaml)
#   LAUNCH="accelerate launch --num_processes 8" runs/paper_main_table.sh
#
# Environment:
#   LAUNCH    how to start training (default `accelerate launch`; configure it once with `accelerate config`).
#             The global batch (128) stays the same for any number of processes.
#   SOURCE    GSM8k-Aug training set: `hub` (default; whynlp/gsm8k-aug, 385,620 problems, needs `pip install
#             datasets` and network) or `gsm8k-train` (offline: GSM8K's 7,473 train problems, equation-only).
#   DATA      the benchmark files (default ../shared/data). GSM8k-Aug valid/test come from da03/
#             Internalize_CoT_Step_by_Step `data/gsm8k/{valid,test}.txt`; SVAMP from arkilpatel/SVAMP `SVAMP.json`.
#   GSM_HARD  GSM8K-Hard: PAL's `datasets/gsmhardv2.jsonl` (reasoning-machines/pal, Apache-2.0), e.g.
#               curl -L -o data/gsmhardv2.jsonl \
#                 https://raw.githubusercontent.com/reasoning-machines/pal/main/datasets/gsmhardv2.jsonl
#             (default $DATA/gsm8k-hard/gsmhardv2.jsonl; skipped with a note when missing).
#   FORCE=1   retrain / re-evaluate even when a finished run or result exists.
# The LLaMA weights are gated on the hub: accept Meta's licence and `huggingface-cli login` first.
# Every stage is resumable: rerunning the script continues interrupted training and skips finished work.
set -euo pipefail
cd "$(dirname "$0")/.."

LAUNCH=${LAUNCH:-accelerate launch}
SOURCE=${SOURCE:-hub}
DATA=${DATA:-../shared/data}
GSM_HARD=${GSM_HARD:-$DATA/gsm8k-hard/gsmhardv2.jsonl}
SVAMP=${SVAMP:-$DATA/svamp/SVAMP.json}
FORCE=${FORCE:-0}
if [ $# -gt 0 ]; then MODELS=("$@"); else MODELS=(qwen2.5-0.5b llama3.2-1b llama3.2-3b llama3.1-8b); fi
OUT=out/paper

log() { echo "[paper] $*"; }

# A run is finished when its newest checkpoint is at train.steps (lori train itself resumes otherwise).
finished() {  # CONFIG
  python - "$1" <<'EOF'
import sys
from lori.config import load_config
from lori.training.checkpoint import list_checkpoints
cfg = load_config(sys.argv[1])
found = list_checkpoints(cfg.out_dir)
sys.exit(0 if found and found[-1].name == f"step-{cfg.train.steps:06d}" else 1)
EOF
}

# 1. GSM8k-Aug training set (minus the validation questions) with its manifest.
if [ "$FORCE" = 1 ] || [ ! -f out/gsm8k-aug/manifest.json ]; then
  log "prepare GSM8k-Aug ($SOURCE)"
  lori prepare gsm8k-aug --out out/gsm8k-aug --source "$SOURCE" --gsm8k-train "$DATA/gsm8k/train.jsonl" \
    --valid "$DATA/gsm8k-aug/valid.txt"
fi
DATA_OVERRIDES=(data.valid_file="$DATA/gsm8k-aug/valid.txt" data.test_file="$DATA/gsm8k-aug/test.txt")

for m in "${MODELS[@]}"; do
  teacher=configs/paper/$m-cot-sft.yaml
  student=configs/paper/$m-lori.yaml
  [ -f "$teacher" ] && [ -f "$student" ] || { echo "no configs/paper/$m-{cot-sft,lori}.yaml" >&2; exit 2; }

  # 2. Teacher (explicit CoT).
  if [ "$FORCE" = 1 ] || ! finished "$teacher"; then
    log "$m: teacher"
    $LAUNCH -m lori train "$teacher" "${DATA_OVERRIDES[@]}"
  fi
  # 3. Teacher statistics (one process; finished shards are kept).
  log "$m: precompute"
  lori precompute "$student" "${DATA_OVERRIDES[@]}"
  # 4. LoRi student.
  if [ "$FORCE" = 1 ] || ! finished "$student"; then
    log "$m: LoRi student"
    $LAUNCH -m lori train "$student" "${DATA_OVERRIDES[@]}"
  fi

  # 5. Evaluation: student and teacher on the three benchmarks, one results.json each.
  runs=("$OUT/$m-lori" "$OUT/$m-cot-sft")
  evaluate() {  # NAME overrides...
    local dir="$OUT/eval-$m-$1"; shift
    if [ "$FORCE" = 1 ] || [ ! -f "$dir/results.json" ]; then
      log "$m: eval $(basename "$dir")"
      lori eval "${runs[@]}" --out "$dir" "$@"
    fi
  }
  evaluate gsm8k data.test_file="$DATA/gsm8k-aug/test.txt"
  if [ -f "$GSM_HARD" ]; then
    evaluate gsm8k-hard data.task=gsm8k-hard data.format=gsm8k-hard data.test_file="$GSM_HARD"
  else
    log "$m: GSM8K-Hard skipped: $GSM_HARD not found (see GSM_HARD above)"
  fi
  evaluate svamp data.task=svamp data.format=svamp data.test_file="$SVAMP"
done

# 6. One table: accuracy (%) and mean generated tokens per benchmark, and the latency ratio teacher / student.
python - "$OUT" "${MODELS[@]}" <<'EOF'
import json, sys
from pathlib import Path
out, models = Path(sys.argv[1]), sys.argv[2:]
benches = ["gsm8k", "gsm8k-hard", "svamp"]
lines = ["| model | method | " + " | ".join(f"{b} acc (tokens)" for b in benches) + " | mean acc | latency ms (GSM8K) |",
         "|---|---|" + "---|" * (len(benches) + 2)]
for m in models:
    rows = {}
    for b in benches:
        f = out / f"eval-{m}-{b}" / "results.json"
        if f.is_file():
            for r in json.loads(f.read_text())["results"]:
                rows.setdefault(r["method"], {})[b] = r
    for method, per in rows.items():
        accs = [100 * per[b]["accuracy"] for b in benches if b in per]
        cells = [f"{100 * per[b]['accuracy']:.1f} ({per[b]['mean_generated_tokens']:.1f})" if b in per else "-"
                 for b in benches]
        lat = per.get("gsm8k", {}).get("latency_ms_per_problem")
        lines.append(f"| {m} | {method} | " + " | ".join(cells) + f" | {sum(accs) / len(accs):.1f} | "
                     + (f"{lat:.0f}" if lat is not None else "-") + " |")
text = "\n".join(lines) + "\n"
(out / "main_table.md").write_text(text)
print(text)
EOF
log "table: $OUT/main_table.md"
