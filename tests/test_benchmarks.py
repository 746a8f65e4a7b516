"""benchmarks/speed.py runs on what landed: at its smallest settings every section and the targets table are
printed (timings are never asserted)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_speed_benchmark_prints_every_section():
    env = {**os.environ, "TQDM_DISABLE": "1"}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "speed.py"), "--digits", "3x3", "--hidden", "64",
                          "--layers", "2", "--steps", "2", "--problems", "4"], capture_output=True, text=True,
                         env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    for section in ("### Training step", "### Inference", "### Precompute", "### Targets"):
        assert section in out.stdout, section
    assert "LoRi training step <= 0.7 x CODI's" in out.stdout
    targets = out.stdout.split("### Targets")[1]
    assert targets.count("| met") + targets.count("| missed") >= 4  # every target has a verdict
