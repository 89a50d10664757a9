"""Every study in analyses/ runs in --quick mode on a tiny model and writes its tables, figures and verdict."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_study(name: str):
    """A study script as a module, by its path (the scripts are not a package; nothing is put on sys.path)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"study_{name}", ROOT / "analyses" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


STUDIES = {
    "metric_agreement": ("overlap.csv", ["jaccard_1pct", "agreement_vs_density"]),
    "density_sweep": ("summary.csv", ["accuracy_vs_density"]),
    "static_vs_dynamic": ("summary.csv", ["accuracy", "drift"]),
    "sparse_vs_lora_vs_full": ("summary.csv", ["accuracy"]),
    "fair_speft": ("verdicts.csv", ["summary", "curves"]),
    "quantization_ties": ("ties.csv", ["tie_break_share"]),
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
    assert any(f"**{word}" in readme.lower() for word in ("holds", "does not hold", "inconclusive"))
    if study not in ("metric_agreement", "quantization_ties"):  # the training studies state their summed training time
        assert "training time sums to" in readme


def test_fair_speft_pairing():
    fair_speft = load_study("fair_speft")

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
    # --time-limit: the first run always starts; none after it fits a tiny limit, so the study stops with the rest
    # unlogged, and the same command without the limit resumes to the same tables
    out = tmp_path / "limited"
    result = subprocess.run([sys.executable, str(ROOT / "analyses" / "fair_speft.py"), "--quick", "--model",
                             str(tiny_model_dir), "--device", "cpu", "--out", str(out), "--no-figures",
                             "--time-limit", "0.001"], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0 and "stopped before the end" in result.stdout, result.stderr[-3000:]
    assert len(pd.read_csv(out / "sweep.csv")) == 1 and not (out / "summary.csv").exists()
    study(out, "--no-figures")
    pd.testing.assert_frame_equal(summaries[1], pd.read_csv(out / "summary.csv"))
    bad = subprocess.run([sys.executable, str(ROOT / "analyses" / "fair_speft.py"), "--worker", "2/2"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "--worker '2/2'" in bad.stderr


def test_share_claims_a_run_once_and_costs_runs_against_the_deadline(tmp_path):
    import time

    from salience_bench import studies as _common

    first, second = (_common.Share(index=i, claims=tmp_path) for i in (0, 1))
    assert first.take("run a") and not second.take("run a") and second.take("run b")
    assert second.held_by_a_live_process("run a")  # this test's own process holds it
    (tmp_path / first._claim("run c").name).write_text("999999999")  # a claim left by a process that has ended
    assert not first.held_by_a_live_process("run c") and not first.held_by_a_live_process("never claimed")
    assert not _common.Share().held_by_a_live_process("run a")  # no claim folder: nothing is another's
    # open: still to be logged in this invocation — unclaimed, or claimed by a live process; not a dead one's
    assert first.open("run a") and first.open("never claimed") and not first.open("run c")
    share = _common.Share(deadline=time.time() + 100)
    assert share.fits("sst2", 10**9)  # nothing finished yet: no estimate, the run starts
    share.seconds_per_step["sst2"] = 0.1
    assert share.fits("sst2", 500) and not share.fits("sst2", 900)  # 1.2 × 0.1 s × steps against 100 s
    assert not share.fits("rte", 900) and share.fits("rte", 500)  # unseen data: the slowest rate seen


def test_spawned_workers_pull_from_one_queue_spread_over_the_visible_gpus(tmp_path, monkeypatch):
    from salience_bench import studies as _common

    script = tmp_path / "worker.py"
    script.write_text("import os, sys\n"
                      "i = sys.argv[sys.argv.index('--worker') + 1].split('/')[0]\n"
                      "claims = sys.argv[sys.argv.index('--claims') + 1]\n"
                      "open(os.path.join(sys.argv[1], i), 'w').write(os.environ['CUDA_VISIBLE_DEVICES'] + ' '\n"
                      "    + os.environ['OMP_NUM_THREADS'] + ' ' + str(os.path.isdir(claims)) + ' ' + claims)\n"
                      "sys.exit(3 if i == '2' else 0)\n")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,7")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    code = _common.spawn_workers(str(script), [str(tmp_path)], 3)
    threads = str(max(1, (os.cpu_count() or 1) // 3))
    seen = [(tmp_path / str(i)).read_text().split() for i in range(3)]
    assert [s[:3] for s in seen] == [[g, threads, "True"] for g in ("4", "7", "4")]
    assert len({s[3] for s in seen}) == 1 and not Path(seen[0][3]).exists()  # one queue, removed at the end
    assert code == 3  # a failing worker's exit code reaches the parent


def test_fair_speft_sweep_edges_constant_prediction_floor_and_ranking_against_the_end():
    fair_speft = load_study("fair_speft")
    from scipy.stats import kendalltau

    import salience_bench as sb

    sweep = pd.DataFrame([dict(task="rte", arm=arm, lr=lr, seed=s, eval_accuracy=acc + 0.001 * s)
                          for arm, best in (("lora", 1e-4), ("full", 5e-5)) for lr in (1e-5, 5e-5, 1e-4) for s in (0, 1)
                          for acc in [0.6 if lr == best else 0.5]])
    table, chosen = fair_speft._sweep_tables(sweep)
    assert len(table) == 6 and dict(zip(chosen.arm, chosen.lr)) == {"full": 5e-5, "lora": 1e-4}
    assert dict(zip(chosen.arm, chosen.edge)) == {"full": "", "lora": "highest"}
    # predicting one class: the majority's share of the reporting split, counted here by hand
    rte = sb.load_dataset("rte", "validation")
    majority = max(sum(1 for y in rte.labels if y == c) for c in set(rte.labels)) / len(rte.labels)
    assert fair_speft.constant_prediction_score(rte) == majority
    assert fair_speft.constant_prediction_score(sb.load_dataset("cola", "validation")) == 0.0
    assert fair_speft.constant_prediction_score(sb.load_dataset("stsb", "validation")) is None
    # the ranking at each evaluation against the last one's, as scipy's Kendall tau of the arm means
    means = {10: {"a": 0.1, "b": 0.3, "c": 0.2}, 20: {"a": 0.3, "b": 0.1, "c": 0.2}, 30: {"a": 0.3, "b": 0.2, "c": 0.1}}
    curves = pd.DataFrame([dict(task="t", recipe="fair", arm=arm, seed=s, step=step, headline=v + 0.01 * s)
                           for step, by_arm in means.items() for arm, v in by_arm.items() for s in (0, 1)])
    settled = fair_speft._ranking_settled(curves)
    end = [means[30][a] for a in "abc"]
    expected = [kendalltau([means[step][a] for a in "abc"], end).statistic for step in (10, 20, 30)]
    assert settled.kendall_tau.tolist() == pytest.approx(expected) and expected[-1] == 1 and expected[0] < 0
    assert settled.fraction.tolist() == pytest.approx([1 / 3, 2 / 3, 1], abs=0.01)
    # the verdict's difference along training: arm means over seeds at each step, a − b
    gap = fair_speft._gap_along_training(curves, "a", "b")
    assert gap.difference.tolist() == pytest.approx([means[step]["a"] - means[step]["b"] for step in (10, 20, 30)])
    assert fair_speft._gap_along_training(curves, "a", "missing").empty


def test_study_readme_names_where_the_runs_trained_and_keeps_hand_notes(tmp_path):
    import argparse
    import time

    from salience_bench import studies as _common
    import torch

    runs = pd.DataFrame(dict(device_name=["NVIDIA H200", "NVIDIA H200", None], device=["cuda", "cuda", "cuda"],
                             train_seconds=[1.0, 2.0, 3.0]))
    assert _common.trained_on(runs) == "NVIDIA H200 (2 runs), cuda (1 runs)"
    assert _common.trained_on(runs.drop(columns="device_name")) == "cuda (3 runs)"  # logs from before device_name
    (tmp_path / "NOTES.md").write_text("- model: an fp16 copy of the weights\n")
    _common.write_readme(tmp_path, "T", "Q?", ["- v"], argparse.Namespace(quick=False), torch.device("cpu"),
                         time.time(), runs=runs)
    readme = (tmp_path / "README.md").read_text()
    assert "- runs trained on: NVIDIA H200 (2 runs), cuda (1 runs)" in readme and "6 s" in readme
    assert readme.rstrip().endswith("- model: an fp16 copy of the weights")


def test_tie_counts_against_a_hand_count():
    quantization_ties = load_study("quantization_ties")
    import torch

    import salience_bench as sb

    scores = {"a": torch.tensor([3.0, 2.0, 2.0, 2.0, 1.0]), "b": torch.tensor([2.0, 2.0, 0.0])}
    # top 3: the 3, then two of the five 2s, chosen by the rule (earlier tensor, lower index): a[1], a[2]
    mask = sb.make_mask(scores, k=3)
    assert mask["a"].tolist() == [True, True, True, False, False] and not mask["b"].any()
    assert quantization_ties.tie_counts(scores, mask) == dict(selected=3, above=1, tied=5, by_tie_break=2)
    distinct = {"a": torch.tensor([3.0, 2.5, 2.0, 1.0])}  # no ties: the rule chooses nothing
    assert quantization_ties.tie_counts(distinct, sb.make_mask(distinct, k=2))["by_tie_break"] == 0
    # Per layer, a quarter of each: a keeps its 3 (no choice), b one of its two 2s (the rule's choice)
    per_layer = quantization_ties.layer_tie_counts(scores, sb.make_mask(scores, density=0.25, scope="layer"))
    assert per_layer == dict(selected=2, above=0, tied=3, by_tie_break=1)  # each threshold entry is "tied"
