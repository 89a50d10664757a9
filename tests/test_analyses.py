"""Every study in analyses/ runs in --quick mode on a tiny model and writes its tables, figures and verdict."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
STUDIES = {
    "metric_agreement": ("overlap.csv", ["jaccard_1pct", "agreement_vs_density"]),
    "density_sweep": ("summary.csv", ["accuracy_vs_density"]),
    "static_vs_dynamic": ("summary.csv", ["accuracy", "drift"]),
    "sparse_vs_lora_vs_full": ("summary.csv", ["accuracy"]),
}


@pytest.mark.parametrize("study", sorted(STUDIES))
def test_study_runs_in_quick_mode(study, tiny_model_dir, tmp_path):
    out = tmp_path / study
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, str(ROOT / "analyses" / f"{study}.py"), "--quick", "--model",
                             str(tiny_model_dir), "--device", "cpu", "--out", str(out)],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    table, figures = STUDIES[study]
    assert len(pd.read_csv(out / table)) > 0
    for stem in figures:
        for ext in ("png", "pdf"):
            assert (out / "figures" / f"{stem}.{ext}").stat().st_size > 1000
    readme = (out / "README.md").read_text()
    assert "## Verdict" in readme and "**" in readme and "command:" in readme
    assert "holds" in readme.lower() or "does not hold" in readme.lower()
