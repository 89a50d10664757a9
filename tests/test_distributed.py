"""Two and three CPU processes (gloo) give bitwise the same scores and masks as one process, and the same
training steps (to rounding)."""

import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp

import salience_bench as sb
from salience_bench import distributed
from salience_bench.training import SparseDeltaEngine
from salience_bench.training import freeze_all_but, head_parameters

from .conftest import gloo_group, tiny_args, tiny_batches, tiny_bert

METRICS = ["grad", "snip", "fisher", "wanda", "spiel_grad", "grasp", "jacob_cov"]


SCORING_BATCHES = 6  # split 3+3 over two processes, 2+2+2 over three


def work(batches_for_me, shard_rows, sum_dtype=None):
    """Scores, masks and the weights after three sparse steps, as this process sees them (``sum_dtype`` None:
    the default)."""
    torch.set_num_threads(1)
    model = tiny_bert()
    options = {} if sum_dtype is None else {"sum_dtype": sum_dtype}
    scores = sb.score(model, batches_for_me, METRICS, **options).materialize()  # before training changes the weights
    masks = {m: sb.make_mask(s, density=0.1) for m, s in scores.items()}
    head = head_parameters(model)
    freeze_all_but(model, head)
    engine = SparseDeltaEngine(model, masks["grad"])
    params = engine.parameters() + list(head.values())
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    model.eval()  # no dropout: both setups compute the same function
    for batch in tiny_batches(seed=9, num_batches=3, batch_size=4):
        mine = shard_rows(batch)
        (model(**mine).loss * distributed.loss_share(len(mine["labels"]))).backward()  # as the training loop does
        distributed.average_gradients_(params)
        optimizer.step()
        optimizer.zero_grad()
        engine.sync_weights()
    engine.remove()
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks = {m: dict(mask) for m, mask in masks.items()}
    return (dict(scores), scores.network), masks, weights


def _worker(rank, world, init_file, out_file, sum_dtype=None):
    os.environ["OMP_NUM_THREADS"] = "1"
    with gloo_group(rank, world, init_file):
        result = work(distributed.shard(tiny_batches(num_batches=SCORING_BATCHES)), distributed.shard_rows, sum_dtype)
        if rank == 0:
            torch.save(result, out_file)


@pytest.mark.parametrize("world", [2, 3])
def test_n_processes_equal_one_bit_for_bit(tmp_path, world):
    """Sums in float64 (the default) make the scores — not just the masks — independent of the split."""
    out_file = tmp_path / "rank0.pt"
    mp.spawn(_worker, args=(world, str(tmp_path / "init"), str(out_file)), nprocs=world, join=True)
    (scores2, network2), masks2, weights2 = torch.load(out_file)
    (scores1, network1), masks1, weights1 = work(tiny_batches(num_batches=SCORING_BATCHES), lambda b: b)
    assert network2["jacob_cov"] == network1["jacob_cov"]
    for metric in scores1:
        for name, s in scores1[metric].items():
            assert torch.equal(scores2[metric][name], s), (metric, name, (scores2[metric][name] - s).abs().max())
    for metric in masks1:
        for name in masks1[metric]:
            assert torch.equal(masks1[metric][name], masks2[metric][name]), (metric, name)
    for name, w in weights1.items():
        torch.testing.assert_close(weights2[name], w, rtol=1e-5, atol=1e-6, msg=name)


def test_float32_sums_depend_on_the_split(tmp_path):
    """The control: float32 sums of the same batches in another grouping differ in their last bits, which the
    bitwise test above would catch if the default were float32."""
    out_file = tmp_path / "rank0.pt"
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(out_file), "float32"), nprocs=2, join=True)
    (scores2, _), _, _ = torch.load(out_file)
    (scores1, _), _, _ = work(tiny_batches(num_batches=SCORING_BATCHES), lambda b: b, "float32")
    differing = sum(int((scores2[m][n] != s).sum()) for m in ("grad", "fisher") for n, s in scores1[m].items())
    assert differing > 0
    for m in ("grad", "fisher"):  # but only in rounding
        for n, s in scores1[m].items():
            torch.testing.assert_close(scores2[m][n], s, rtol=1e-5, atol=1e-6 * float(s.abs().max()))


@pytest.mark.skipif(shutil.which("torchrun") is None and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "torchrun")),
                    reason="torchrun is not on PATH")
@pytest.mark.parametrize("sharding", [[], ["--shard"]], ids=["replicated", "sharded"])
def test_torchrun_compare_writes_once_and_matches_one_process(tiny_model_dir, tmp_path, sharding):
    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    common = ["--metrics", "grad,fisher,wanda", "--batches", "4", "--no-figures"]
    two = subprocess.run(
        [torchrun, "--nproc_per_node=2", f"--master_port={29533 + len(sharding)}", "-m", "salience_bench.compare",
         *tiny_args(tiny_model_dir, tmp_path / "two", *common, *sharding)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, "-m", "salience_bench.compare", *tiny_args(tiny_model_dir, tmp_path / "one", *common)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.stdout.count("wrote ") == 1  # rank 0 alone reports and writes
    for name in ("overlap.csv", "rank_correlation.csv", "allocation.csv"):
        a, b = pd.read_csv(tmp_path / "one" / name), pd.read_csv(tmp_path / "two" / name)
        pd.testing.assert_frame_equal(a, b, rtol=1e-5)


@pytest.mark.skipif(shutil.which("torchrun") is None and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "torchrun")),
                    reason="torchrun is not on PATH")
def test_torchrun_shard_refuses_uneven_batches_on_every_rank(tiny_model_dir, tmp_path):
    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([torchrun, "--nproc_per_node=2", "--master_port=29541", "-m", "salience_bench.compare",
                          *tiny_args(tiny_model_dir, tmp_path / "odd", "--metrics", "grad", "--batches", "3", "--shard")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode != 0
    assert "--batches 3 does not split evenly over 2 sharded processes" in run.stderr
    assert not (tmp_path / "odd").exists()
