"""The performance regression check: the committed CPU ratios hold, and a deliberately slowed ratio fails."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_check(*extra, env_extra=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "benchmarks.regression", "--check", "--repeats", "5", *extra],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)


def test_the_cpu_ratios_hold_against_the_committed_history():
    result = run_check()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "five_metrics_over_grad" in result.stdout and "| reference |" in result.stdout


def test_a_deliberately_slowed_ratio_fails_the_check():
    result = run_check("--only", "five_metrics_over_grad",
                       env_extra={"SALIENCE_BENCH_SLOWDOWN": "five_metrics_over_grad=3"})
    assert result.returncode == 1, result.stdout + result.stderr
    assert "REGRESSION five_metrics_over_grad: ratio" in result.stderr and "vs reference" in result.stderr
