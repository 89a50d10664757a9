import json

import pandas as pd
import pytest
import torch

import salience_bench as sb
from salience_bench import analysis, compare

from .conftest import run_cli, tiny_args

OUTPUTS = ["overlap.csv", "rank_correlation.csv", "allocation.csv", "manifest.json"]
FIGURES = [f"{stem}.{ext}" for stem in ("jaccard_heatmap", "spearman_heatmap", "allocation") for ext in ("png", "pdf")]




def test_tiny_model_end_to_end(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert compare.main(tiny_args(tiny_model_dir, out, "--metrics", "grad,snip,fisher,magnitude", "--seed", "3")) == 0
    for name in OUTPUTS:
        assert (out / name).is_file(), name
    for name in FIGURES:
        assert (out / "figures" / name).stat().st_size > 1000, name
    overlap = pd.read_csv(out / "overlap.csv")
    ranks = pd.read_csv(out / "rank_correlation.csv")
    alloc = pd.read_csv(out / "allocation.csv")
    assert list(overlap.columns) == analysis.OVERLAP_COLUMNS
    assert list(ranks.columns) == analysis.RANK_COLUMNS
    assert list(alloc.columns) == analysis.ALLOCATION_COLUMNS
    assert len(overlap) == len(ranks) == 6 * (12 + 1)  # 6 pairs × (12 tensors + all)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["metrics"] == ["grad", "snip", "fisher", "magnitude"]
    assert manifest["seed"] == 3 and manifest["versions"]["torch"] == torch.__version__
    total = manifest["eligible_weights"]
    assert (alloc[alloc.layer == "all"].selected == round(0.01 * total)).all()
    printed = capsys.readouterr().out
    assert "chance-level Jaccard" in printed and "Spearman" in printed
    # No temporary files are left behind.
    assert not [p for p in out.rglob(".*") if p.is_file()]


def test_same_seed_same_results(tiny_model_dir, tmp_path):
    for name in ("a", "b"):
        assert compare.main(tiny_args(tiny_model_dir, tmp_path / name, "--metrics", "grad,random", "--no-figures")) == 0
    for name in ("overlap.csv", "rank_correlation.csv", "allocation.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_k_and_layer_scope(tiny_model_dir, tmp_path):
    assert compare.main(tiny_args(tiny_model_dir, tmp_path / "k", "--metrics", "grad,snip", "--k", "500", "--no-figures")) == 0
    alloc = pd.read_csv(tmp_path / "k" / "allocation.csv")
    assert (alloc[alloc.layer == "all"].selected == 500).all()
    assert compare.main(tiny_args(tiny_model_dir, tmp_path / "l", "--metrics", "grad,snip", "--scope", "layer",
                                  "--density", "0.1", "--no-figures")) == 0
    alloc = pd.read_csv(tmp_path / "l" / "allocation.csv")
    per_layer = alloc[alloc.layer != "all"]
    assert (per_layer.selected == (per_layer.numel * 0.1).round()).all()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--metrics", "grad,snp"], "unknown metric 'snp'. Did you mean 'snip'?"),
        (["--density", "0"], "density 0 must be in (0, 1]"),
        (["--density", "1.5"], "density 1.5 must be in (0, 1]"),
        (["--k", "100000000"], "k=100000000 is larger than the"),
        (["--dataset", "imdb"], "unknown dataset 'imdb'"),
        (["--device", "tpu"], "unknown device 'tpu'"),
        (["--include", "nothing*"], "no eligible tensors"),
        (["--k", "10", "--scope", "layer"], "k=10 is a global count"),
        (["--batches", "0"], "0 must be ≥ 1"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tiny_model_dir, tmp_path, args, message):
    out = tmp_path / "out"
    result = run_cli(*tiny_args(tiny_model_dir, out), *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not any(out.glob("*.csv")) and not (out / "manifest.json").exists()


def test_unwritable_and_finished_output_folders(tiny_model_dir, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = run_cli(*tiny_args(tiny_model_dir, blocker / "sub"))
    assert result.returncode == 2 and "is not writable" in result.stderr and "Traceback" not in result.stderr
    out = tmp_path / "done"
    assert compare.main(tiny_args(tiny_model_dir, out, "--metrics", "magnitude,random", "--no-figures")) == 0
    before = (out / "overlap.csv").read_bytes()
    result = run_cli(*tiny_args(tiny_model_dir, out, "--metrics", "grad,snip"))
    assert result.returncode == 2 and "already holds a finished run" in result.stderr
    assert (out / "overlap.csv").read_bytes() == before
    assert compare.main(tiny_args(tiny_model_dir, out, "--metrics", "grad,snip", "--no-figures", "--overwrite")) == 0


def test_list_metrics_and_help():
    result = run_cli("--list-metrics")
    assert result.returncode == 0
    for name in sb.list_metrics():
        assert name in result.stdout
    assert "alias: gradient" in result.stdout
    result = run_cli("--help")
    for flag in ("--metrics", "--density", "--k", "--scope", "--batches", "--batch-size", "--seed", "--device",
                 "--list-metrics", "--include", "--exclude", "--out", "--dataset", "--model"):
        assert flag in result.stdout


@pytest.mark.slow
def test_bundled_default_run(tmp_path):
    """The README's main command, as a user runs it (only --out added)."""
    out = tmp_path / "default"
    result = run_cli("--metrics", "grad,snip,fisher", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["eligible_weights"] == 10_616_832
    assert manifest["selected_weights"] == round(0.01 * 10_616_832)
    overlap = pd.read_csv(out / "overlap.csv")
    glob = overlap[overlap.layer == "all"]
    # Metrics agree far above chance on the real model (chance Jaccard ≈ 0.005).
    assert (glob.jaccard > 10 * manifest["chance_jaccard"]).all()
    assert "scoring" in result.stderr  # progress bars go to stderr
    for name in FIGURES:
        assert (out / "figures" / name).is_file()


def test_all_metrics_with_network_scores_and_structures(tiny_model_dir, tmp_path):
    out = tmp_path / "all"
    assert compare.main(tiny_args(tiny_model_dir, out, "--metrics", "all", "--lift-rank", "4")) == 0
    network = pd.read_csv(out / "network_scores.csv")
    assert network.metric.tolist() == ["jacob_cov"] and network.score.notna().all()
    overlap = pd.read_csv(out / "overlap.csv")
    maskable = [m for m in sb.list_metrics() if sb.get_scorer(m).maskable]
    assert set(overlap.metric_a) | set(overlap.metric_b) == set(maskable)
    assert len(overlap[overlap.layer == "all"]) == len(maskable) * (len(maskable) - 1) // 2
    assert (out / "figures" / "jaccard_heatmap.png").is_file()
    out = tmp_path / "nm"
    assert compare.main(tiny_args(tiny_model_dir, out, "--metrics", "grad,wanda", "--structure", "nm", "--nm", "2:4",
                                  "--no-figures")) == 0
    alloc = pd.read_csv(out / "allocation.csv")
    assert (alloc.density == 0.5).all()
    out = tmp_path / "block"
    assert compare.main(tiny_args(tiny_model_dir, out, "--metrics", "smt_block,grad", "--structure", "block",
                                  "--block-size", "16", "--density", "0.25", "--no-figures")) == 0
    alloc = pd.read_csv(out / "allocation.csv")
    assert (alloc.selected % 16 == 0).all()  # whole 16×16 tiles (the tiny model's sizes are multiples of 16)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--structure", "nm", "--density", "0.1"], "structure 'nm' fixes the density"),
        (["--structure", "row", "--k", "10"], "use density, not k"),
        (["--nm", "5:4", "--structure", "nm"], "0 < N ≤ M"),
        (["--metrics", "zzz*"], "matches no metric"),
    ],
)
def test_bad_structure_input_exits_2(tiny_model_dir, tmp_path, args, message):
    result = run_cli(*tiny_args(tiny_model_dir, tmp_path / "o"), *args)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("dataset, headline", [("stsb", "pearson"), ("mrpc", "accuracy")])
def test_glue_pair_tasks_score_and_train_by_name(tiny_model_dir, tmp_path, dataset, headline):
    """Sentence pairs and STS-B's regression head, by name: scores, training and the task's metrics."""
    config = sb.CompareConfig(model=str(tiny_model_dir), dataset=dataset, metrics=("grad", "fisher"), batches=2,
                              batch_size=4, max_length=16,
                              training=sb.TrainingPlan(baselines=("lora",), steps=2, batch_size=4))
    run = sb.run_and_write(config, tmp_path / dataset, figures=False)
    rows, summary = run.downstream.rows, run.downstream.summary
    assert (summary["measure"] == headline).all()
    if dataset == "stsb":
        assert rows["eval_accuracy"].isna().all() and rows["eval_pearson"].between(-1, 1).all()
        assert rows["eval_spearman"].between(-1, 1).all()
        assert summary["accuracy_mean"].tolist() == pytest.approx(rows["eval_pearson"].tolist())  # one seed each
    else:
        assert rows["eval_f1"].between(0, 1).all() and rows["eval_mcc"].between(-1, 1).all()
    saved = pd.read_csv(tmp_path / dataset / "downstream.csv")
    assert len(saved) == len(rows) == 3  # sparse grad, sparse fisher, lora


def test_every_scorer_option_is_a_flag_that_reaches_the_scorer(monkeypatch):
    from salience_bench import pipeline
    from salience_bench.cli_options import build_parser

    help_text = build_parser().format_help()
    for name in sb.scorer_options():
        assert "--" + name.replace("_", "-") in help_text, name
    seen = {}

    def fake_run(config, out, **kwargs):  # the configuration the CLI hands the pipeline, nothing run
        seen.update(config.score_options)
        raise sb.SalienceBenchError("stop here")

    monkeypatch.setattr(pipeline, "run_and_write", fake_run)
    monkeypatch.setattr(sb, "run_and_write", fake_run)
    assert compare.main(["--metrics", "synflow", "--synflow-tokens", "5", "--lift-rank", "3", "--block-size", "7"]) == 2
    assert seen["synflow_tokens"] == 5 and seen["lift_rank"] == 3 and seen["block_size"] == 7
    with pytest.raises(SystemExit) as exit_info:
        compare.main(["--synflow-tokens", "0"])
    assert exit_info.value.code == 2


def test_a_configuration_reads_no_files_until_the_run_checks_them(tmp_path):
    config = sb.CompareConfig(load_masks=(str(tmp_path / "missing.safetensors"),))  # built without touching the disk
    with pytest.raises(sb.SalienceBenchError, match="missing.safetensors' does not exist"):
        sb.run_and_write(config, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
