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


def test_fair_speft_workers_share_the_grid_and_give_the_same_tables(tiny_model_dir, tmp_path):
    """--workers 2: two processes log their halves of the sweep and the final runs in files of their own; the
    tables written at the end equal a single process's (same seeds, same runs)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    summaries = {}

    def study(out, *extra):
        result = subprocess.run([sys.executable, str(ROOT / "analyses" / "fair_speft.py"), "--quick", "--model",
                                 str(tiny_model_dir), "--device", "cpu", "--out", str(out), *extra],
                                capture_output=True, text=True, env=env, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]

    for workers in (1, 2):
        out = tmp_path / f"workers{workers}"
        # the 2-worker run as on a machine without matplotlib: tables only, the figure drawn by a rerun below
        study(out, "--workers", str(workers), *(["--no-figures"] if workers == 2 else []))
        summaries[workers] = pd.read_csv(out / "summary.csv")
    out = tmp_path / "workers2"
    assert not (out / "figures" / "summary.png").exists()
    study(out)  # every run is logged: this only writes the tables again and draws the figure
    assert (out / "figures" / "summary.png").stat().st_size > 1000
    for grid in ("sweep", "runs"):
        shares = [pd.read_csv(out / f"{grid}.worker{i}.csv") for i in (0, 1)]
        assert all(len(s) for s in shares) and not set(shares[0].run_id) & set(shares[1].run_id)
        assert not (out / f"{grid}.csv").exists()  # the parent found every run logged: it ran none itself
    pd.testing.assert_frame_equal(summaries[1], summaries[2])
    bad = subprocess.run([sys.executable, str(ROOT / "analyses" / "fair_speft.py"), "--worker", "2/2"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "--worker '2/2'" in bad.stderr
