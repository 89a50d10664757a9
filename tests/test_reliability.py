"""Hostile input and faults: each ends in one clear line and exit 2, and a results folder always holds
exactly one whole run (old or new). Faults are real processes and signals."""

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import scipy.stats
import torch

import salience_bench as sb

from .conftest import run_cli, tiny_args, tiny_batches, tiny_bert

TIMING = ["train_seconds", "seconds_per_step", "peak_memory_bytes"]


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` with its bytes (the manifest's clock fields aside)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            out[str(path.relative_to(folder))] = data
    return out


def assert_clean_failure(result, message: str) -> None:
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr  # one line, no usage block


def no_trace(out: Path) -> bool:
    """Neither the folder nor its staging sibling was left behind."""
    return not out.exists() and not out.with_name(out.name + ".partial").exists()


# --- bad input: one line, exit 2, nothing written ---------------------------------------------

@pytest.mark.parametrize(
    "extra, message",
    [
        (["--structure", "block", "--block-size", "100000"], "block size 100000 is larger than every eligible tensor"),
        (["--metrics", "smt_block,grad", "--block-size", "100000"], "block size 100000 (smt_block) is larger"),
        (["--max-length", "1"], "max length 1 leaves no room for text"),
        (["--structure", "row", "--density", "0.0003"], "selects 0 entries of every row"),
        (["--structure", "block", "--block-size", "16", "--density", "0.0001"], "selects 0 of 64 tiles"),
        (["--train", "--dtype", "float16"], "dtype float16 cannot train on the CPU"),
        (["--train", "--lr", "inf"], "inf must be a finite number > 0"),
        (["--train", "--lr", "nan"], "nan must be a finite number > 0"),
        (["--train", "--weight-decay", "-1"], "-1 must be a finite number ≥ 0"),
        (["--train", "--baselines", "none,full"], "'none' (no baseline) cannot be combined with others"),
        (["--density", "abc"], "error: argument --density: 'abc' is not a number"),
        (["--include", "nothing*"], "no eligible tensors"),
        (["--load-mask", "no-such-mask.safetensors"], "mask file 'no-such-mask.safetensors' does not exist"),
        (["--export-peft", "adapters"], "export-peft builds SHiRA adapters"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_leaves_no_folder(tiny_model_dir, tmp_path, extra, message):
    out = tmp_path / "sub" / "out"
    assert_clean_failure(run_cli(*tiny_args(tiny_model_dir, out), *extra), message)
    assert no_trace(out) and not (tmp_path / "sub").exists()


def test_missing_and_truncated_model_folders(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    result = run_cli(*tiny_args(tmp_path / "no-such-model", out))
    assert_clean_failure(result, "does not exist")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert_clean_failure(run_cli(*tiny_args(broken, out)), "cannot load model")
    assert no_trace(out)


def test_a_folder_that_is_not_a_finished_run_is_never_replaced(tiny_model_dir, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "figures").write_text("a file where the run would write a folder")
    before = snapshot(out)
    for extra in ([], ["--overwrite"]):
        assert_clean_failure(run_cli(*tiny_args(tiny_model_dir, out), *extra), "holds no finished salience_bench run")
    assert snapshot(out) == before and not out.with_name("mine.partial").exists()


def test_a_refused_rerun_changes_nothing(tiny_model_dir, tmp_path):
    out = tmp_path / "done"
    assert run_cli(*tiny_args(tiny_model_dir, out, "--metrics", "grad,snip")).returncode == 0
    before = snapshot(out)
    assert_clean_failure(run_cli(*tiny_args(tiny_model_dir, out, "--metrics", "magnitude,random")),
                         "already holds a finished run")
    assert snapshot(out) == before


def test_a_write_failure_is_reported_and_leaves_the_folder_unchanged(tiny_model_dir, tmp_path):
    """A full disk, simulated with a per-process file-size limit (writes fail with EFBIG, as with ENOSPC)."""
    import resource

    out = tmp_path / "full"

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "salience_bench.compare", *tiny_args(
        tiny_model_dir, out, "--metrics", "all", "--lift-rank", "4", "--no-figures")],
        capture_output=True, text=True, env=env, preexec_fn=limit)
    assert_clean_failure(result, f"writing the results into '{out}.partial' failed: File too large")
    assert f"'{out}' is unchanged" in result.stderr and not out.exists()
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]


def test_overwrite_replaces_the_whole_run(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    train = ["--metrics", "grad", "--train", "--steps", "3", "--baselines", "full"]
    assert run_cli(*tiny_args(tiny_model_dir, out, *train)).returncode == 0
    assert (out / "figures" / "accuracy.png").is_file()
    first = pd.read_csv(out / "eval_curve.csv")
    result = run_cli(*tiny_args(tiny_model_dir, out, *train, "--lr", "0.05", "--overwrite", "--no-figures"))
    assert result.returncode == 0, result.stderr
    assert "resuming" not in result.stderr
    assert not (out / "figures").exists()  # the old run's figures went with it
    second = pd.read_csv(out / "eval_curve.csv")
    assert not first.eval_loss.equals(second.eval_loss)  # retrained with the new learning rate
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["training"]["lr"] == 0.05 and not out.with_name("run.partial").exists()


# --- faults: real processes and signals ---------------------------------------------------------

def start(tiny_model_dir, out, *extra):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    # A suite started in the background ("cmd &") runs with SIGINT ignored, and children inherit that: give the run
    # the default disposition, so that Python turns SIGINT into KeyboardInterrupt as it does in a terminal
    return subprocess.Popen([sys.executable, "-m", "salience_bench.compare", *tiny_args(tiny_model_dir, out, *extra)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for(predicate, process, timeout=240.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if process.poll() is not None:
            raise AssertionError(f"the run ended first: {process.communicate()[1][-2000:]}")
        time.sleep(0.05)
    process.kill()
    raise AssertionError("timed out")


TRAIN = ["--metrics", "grad,snip", "--train", "--steps", "20", "--seeds", "0,1", "--baselines", "full,lora"]


def downstream_rows(path: Path) -> int:
    return len(pd.read_csv(path)) if path.exists() else 0


def test_killed_run_resumes_only_with_the_same_configuration(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    partial = tmp_path / "run.partial"
    process = start(tiny_model_dir, out, *TRAIN)
    wait_for(lambda: downstream_rows(partial / "downstream.csv") >= 2, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not out.exists() and (partial / "downstream.csv").is_file()
    kept = snapshot(partial)
    for changed in (["--lr", "0.001"], ["--density", "0.02"], ["--batches", "3"]):
        result = run_cli(*tiny_args(tiny_model_dir, out, *TRAIN, *changed))
        assert_clean_failure(result, "holds an unfinished run with another configuration")
        assert snapshot(partial) == kept and not out.exists()
    resumed = run_cli(*[a for a in tiny_args(tiny_model_dir, out, *TRAIN) if a != "--quiet"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert re.search(r"resuming: [2-7] of 8 downstream runs", resumed.stderr.replace("\n", " ")) and not partial.exists()
    straight = tmp_path / "straight"
    assert run_cli(*tiny_args(tiny_model_dir, straight, *TRAIN)).returncode == 0
    a = pd.read_csv(out / "downstream.csv").drop(columns=TIMING)
    b = pd.read_csv(straight / "downstream.csv").drop(columns=TIMING)
    pd.testing.assert_frame_equal(a, b)  # the resumed run equals an uninterrupted one


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_interrupted_overwrite_keeps_the_old_run_whole(tiny_model_dir, tmp_path, sig):
    out = tmp_path / "run"
    assert run_cli(*tiny_args(tiny_model_dir, out, "--metrics", "grad,snip")).returncode == 0
    before = snapshot(out)
    process = start(tiny_model_dir, out, *TRAIN, "--overwrite")
    wait_for(lambda: downstream_rows(tmp_path / "run.partial" / "downstream.csv") >= 1, process)
    process.send_signal(sig)
    _, err = process.communicate(timeout=120)
    assert process.returncode == {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGKILL: -9}[sig], err[-2000:]
    assert "Traceback" not in err
    assert snapshot(out) == before  # the old run, whole
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]


def test_sigterm_while_a_figure_is_written_leaves_no_temporary_file(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    script = (
        "import os, signal, sys\n"
        "import matplotlib.figure\n"
        "original = matplotlib.figure.Figure.savefig\n"
        "def savefig(self, *args, **kwargs):\n"
        "    original(self, *args, **kwargs)\n"  # the temporary file is written ...
        "    os.kill(os.getpid(), signal.SIGTERM)\n"  # ... and SIGTERM arrives before it is renamed
        "matplotlib.figure.Figure.savefig = savefig\n"
        "from salience_bench import compare\n"
        "sys.exit(compare.main(sys.argv[1:]))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script, *tiny_args(tiny_model_dir, out)],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 143 and "terminated" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]


def test_a_second_run_into_the_same_folder_is_refused(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    first = start(tiny_model_dir, out, *TRAIN)
    wait_for(lambda: (tmp_path / "run.partial" / ".lock").exists(), first)
    second = run_cli(*tiny_args(tiny_model_dir, out, *TRAIN))
    assert_clean_failure(second, f"another run (pid {first.pid}) is writing to '{out}'")
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
    assert (out / "manifest.json").is_file() and downstream_rows(out / "downstream.csv") == 2 * 4


# --- the Python API -----------------------------------------------------------------------------

def test_rank_statistics_propagate_nan_as_scipy_does():
    x = torch.tensor([1.0, 2.0, float("nan"), 4.0, 0.5])
    y = torch.tensor([1.0, 3.0, 2.0, 4.0, 0.0])
    assert math.isnan(scipy.stats.spearmanr(x, y).statistic) and math.isnan(sb.spearman(x, y))
    assert math.isnan(scipy.stats.kendalltau(x, y).statistic) and math.isnan(sb.kendall(x, y))
    assert math.isnan(sb.spearman({"a": y}, {"a": x}))


@pytest.mark.parametrize("max_n", [-3, 0, 1, 2.5, True])
def test_kendall_sample_size_is_checked(max_n):
    with pytest.raises(sb.SalienceBenchError, match=f"max_n={max_n!r} must be an integer ≥ 2"):
        sb.kendall(torch.rand(10), torch.rand(10), max_n=max_n)


def test_make_batches_never_returns_another_number_of_batches():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(sb.models.bundled_model_path()))
    data = sb.load_dataset("ag_news", "train")
    with pytest.raises(sb.SalienceBenchError, match="100 batches of 200 need 20,000 examples, but ag_news train has 10,001"):
        sb.make_batches(data, tokenizer, batch_size=200, num_batches=100)
    assert len(sb.make_batches(data, tokenizer, batch_size=200, num_batches=50, max_length=8)) == 50


def test_api_misuse_is_a_salience_bench_error_naming_the_value(model, batches):
    scores = {"a": torch.rand(4, 4)}
    cases = [
        (lambda: sb.make_mask([torch.rand(3)], density=0.5), "scores must be a non-empty dict"),
        (lambda: sb.make_mask({"a": [0.1, 0.2]}, density=0.5), "scores of 'a' must be a tensor, got list"),
        (lambda: sb.make_mask(scores, density=0.5, structure="block", block_size=0), "block size 0 must be an integer ≥ 1"),
        (lambda: sb.score(model, [{**batches[0], "labels": torch.tensor([0, 1, 5, 0])}], ["grad"]),
         "scoring batch 0 has label 5, but the model has 2 classes (valid labels: 0 … 1)"),
        (lambda: sb.score(model, [batches[0]["input_ids"]], ["grad"]), "scoring batch 0 is a Tensor"),
        (lambda: sb.score(model, [{k: v[:0] for k, v in batches[0].items()}], ["grad"]), "scoring batch 0 holds no examples"),
        (lambda: sb.score(model, batches, ["grad"], params={"x": torch.zeros(3)}), "params['x'] is not a parameter"),
        (lambda: sb.score(model, batches, ["grad"], params={"w": torch.nn.Parameter(torch.zeros(3))}),
         "params['w'] is not a parameter"),
        (lambda: sb.score(model, batches, ["grad"], params={}), "params must be a non-empty dict"),
        (lambda: sb.score(model, None, ["lift"], options={"lift_rank": 0}), "lift_rank=0 must be ≥ 1"),
        (lambda: sb.score(model, None, ["lift"], options={"lift_rnk": 4}), "unknown scorer option 'lift_rnk'"),
    ]
    for call, message in cases:
        with pytest.raises(sb.SalienceBenchError) as info:
            call()
        assert message in str(info.value), (message, str(info.value))


def test_a_diverging_training_run_stops_with_a_clear_error(tmp_path):
    from transformers import AutoTokenizer

    from salience_bench.training import RunInputs, TrainConfig, run_one

    tokenizer = AutoTokenizer.from_pretrained(str(sb.models.bundled_model_path()))
    data = sb.load_dataset("sst2", "validation")
    inputs = RunInputs(lambda seed: (tiny_bert(seed, vocab_size=tokenizer.vocab_size), tokenizer), data, data,
                       torch.device("cpu"))
    config = TrainConfig(steps=5, full_lr=1e30, batch_size=4, max_length=16)
    with pytest.raises(sb.SalienceBenchError, match="full seed 0: the training loss is (nan|inf) at step"):
        run_one("full", None, 0, config, inputs, progress=False)


def test_tiny_batches_still_score(model):
    """The checks above do not get in the way of valid input."""
    assert set(sb.score(model, tiny_batches(), ["grad"])) == {"grad"}


def test_git_commit_is_dirty_for_changed_tracked_files_except_under_the_ignored_folder(tmp_path):
    from salience_bench.report import git_commit

    if shutil.which("git") is None:
        pytest.skip("no git")
    repo = tmp_path / "repo"
    (repo / "figures" / "study").mkdir(parents=True)
    (repo / "code.py").write_text("a = 1\n")
    (repo / "figures" / "study" / "README.md").write_text("old\n")
    env = ["-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), *env, "add", "."], check=True)
    subprocess.run(["git", "-C", str(repo), *env, "commit", "-qm", "c"], check=True)
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert git_commit(repo) == head
    (repo / "figures" / "study" / "README.md").write_text("new\n")  # a report rewriting its own folder
    assert git_commit(repo) == head + "-dirty"
    assert git_commit(repo, ignore=repo / "figures" / "study") == head
    (repo / "code.py").write_text("a = 2\n")  # a code change still counts
    assert git_commit(repo / "figures", ignore=repo / "figures" / "study") == head + "-dirty"


# --- the new surface: JSON lines, export folders, Conv1D under peft, seeds -----------------------------------------

def test_a_jsonl_file_that_is_not_utf8_is_named_with_its_line(tiny_causal_dirs, tmp_path):
    data = tmp_path / "latin1.jsonl"
    data.write_bytes(b'{"prompt": "a", "completion": "b"}\n{"prompt": "caf\xe9", "completion": "c"}\n')
    out = tmp_path / "out"
    result = run_cli(*tiny_args(tiny_causal_dirs["llama"], out, "--dataset", f"jsonl:{data}"))
    assert_clean_failure(result, f"'{data}' line 2 is not UTF-8 (byte 0xe9")
    assert no_trace(out)


@pytest.mark.parametrize("where", ["a file", "under a missing folder", "under a file"])
def test_export_peft_folders_are_checked_before_scoring(tiny_model_dir, tmp_path, where):
    existing = tmp_path / "existing.txt"
    existing.write_text("keep me")
    target = {"a file": existing, "under a missing folder": tmp_path / "missing" / "adapters",
              "under a file": existing / "adapters"}[where]
    message = {"a file": "is a file, not a folder", "under a missing folder": "which does not exist",
               "under a file": "which is a file"}[where]
    out = tmp_path / "out"
    result = run_cli(*tiny_args(tiny_model_dir, out, "--scope", "lora", "--rank", "1", "--export-peft", str(target)))
    assert_clean_failure(result, message)
    assert no_trace(out) and existing.read_text() == "keep me" and not (tmp_path / "missing").exists()


@pytest.mark.parametrize("extra, message", [
    (["--scope", "lora", "--rank", "1", "--export-peft", "ADAPTERS"], "peft's SHiRA adapters (--export-peft) adapt nn.Linear"),
    (["--train", "--baselines", "shira"], "the shira baseline's peft layers adapt nn.Linear layers only"),
    (["--train", "--baselines", "supertuning"], "the supertuning baseline's peft layers adapt nn.Linear layers only"),
])
def test_peft_methods_that_take_linear_layers_only_refuse_gpt2_up_front(tiny_causal_dirs, tmp_path, extra, message):
    out = tmp_path / "out"
    extra = [str(tmp_path / "adapters") if e == "ADAPTERS" else e for e in extra]
    result = run_cli(*tiny_args(tiny_causal_dirs["gpt2"], out, "--dataset", "gsm8k", *extra))
    assert_clean_failure(result, message)
    assert "Conv1D" in result.stderr and no_trace(out) and not (tmp_path / "adapters").exists()


@pytest.mark.parametrize("extra", [["--seed", str(2**64)], ["--train", "--seeds", f"1,{2**64}"], ["--seed", "-1"]])
def test_seeds_outside_64_bits_are_refused(tiny_model_dir, tmp_path, extra):
    out = tmp_path / "out"
    assert_clean_failure(run_cli(*tiny_args(tiny_model_dir, out, *extra)), "must be an integer in [0, 2^63 − 1]")
    assert no_trace(out)
