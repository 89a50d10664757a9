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
    "fair_speft": ("verdicts.csv", ["summary"]),
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
    if study != "metric_agreement":  # the training studies state their runs' summed training time
        assert "training time sums to" in readme


def test_fair_speft_decision_rule_and_pairing():
    sys.path.insert(0, str(ROOT / "analyses"))
    import fair_speft

    assert fair_speft.verdict([0.01, 0.012, 0.011])[0] == "holds"
    assert fair_speft.verdict([-0.02, -0.021, -0.019])[0] == "does not hold"
    assert fair_speft.verdict([-0.02, 0.03, 0.0])[0] == "inconclusive"
    assert fair_speft.verdict([0.5])[0] == "inconclusive"  # one seed: no interval
    low = fair_speft.verdict([-0.004, -0.003, -0.0035])  # below 0 but within the 0.5-point margin: holds
    assert low[0] == "holds" and low[2] > -0.005
    rows = pd.DataFrame(dict(seed=[0, 0, 1, 1, 2], arm=["a", "b", "a", "b", "a"], headline=[0.8, 0.7, 0.6, 0.65, 0.9]))
    assert fair_speft.paired(rows, "a", "b", "headline") == pytest.approx([0.1, -0.05])  # seed 2 has no partner
