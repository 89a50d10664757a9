"""Decoder LLMs: prompt/completion batches, per-example quantities against one-example-at-a-time loops on
padded batches (left and right padding, Llama and GPT-2's Conv1D), and the CLI end to end."""

import json
import math

import pandas as pd
import pytest
import torch

import salience_bench as sb
from salience_bench.data import IGNORE_INDEX, encode_prompts, final_number
from salience_bench.synthetic import SIMPLE_CHAT_TEMPLATE

from .conftest import run_cli
from .reference import causal_lm_per_example_reference


def load(folder, padding_side="right", dtype=torch.float64):
    model, tokenizer = sb.load_model_and_tokenizer(str(folder), task="causal-lm", dtype=dtype)
    tokenizer.padding_side = padding_side
    return model.eval(), tokenizer


def prompt_batches(tokenizer, num_batches=2, batch_size=4, max_length=320, seed=0):
    data = sb.load_dataset("gsm8k", "train")
    return sb.make_batches(data, tokenizer, batch_size=batch_size, num_batches=num_batches, max_length=max_length,
                           seed=seed)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3_text"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_per_example_quantities_equal_a_one_example_at_a_time_loop(tiny_causal_dirs, arch, side):
    model, tokenizer = load(tiny_causal_dirs[arch], side)
    batches = prompt_batches(tokenizer)
    targets = [(b["labels"][:, 1:] != IGNORE_INDEX).sum(1) for b in batches]
    assert len({int(t) for ts in targets for t in ts}) > 2  # unequal numbers of target tokens per example
    assert any((b["attention_mask"] == 0).any() for b in batches)  # and real padding
    names = list(sb.eligible_parameters(model))
    scores = sb.score(model, batches, ["grad", "fisher", "wanda"])
    reference = causal_lm_per_example_reference(model, batches, names)
    for metric in ("grad", "fisher", "wanda"):
        for n in names:
            expected = reference[metric][n]
            torch.testing.assert_close(scores[metric][n].double(), expected, rtol=1e-4, atol=1e-6 * float(expected.max()))


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2", "gemma3_text"])
def test_left_and_right_padding_give_the_same_scores(tiny_causal_dirs, arch):
    scores = {}
    for side in ("right", "left"):
        model, tokenizer = load(tiny_causal_dirs[arch], side)
        scores[side] = sb.score(model, prompt_batches(tokenizer), ["grad", "fisher"])
    for metric in ("grad", "fisher"):
        for n, s in scores["right"][metric].items():
            torch.testing.assert_close(scores["left"][metric][n], s, rtol=1e-5, atol=1e-7 * float(s.abs().max()))


def test_gpt2_conv1d_weights_are_eligible_and_train_sparsely(tiny_causal_dirs):
    from benchmarks.common import dense_masked_gradients_
    from salience_bench.training import SparseDeltaEngine, freeze_all_but

    model, tokenizer = load(tiny_causal_dirs["gpt2"], dtype=torch.float32)
    names = list(sb.eligible_parameters(model))
    assert names[:4] == ["transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_proj.weight",
                         "transformer.h.0.mlp.c_fc.weight", "transformer.h.0.mlp.c_proj.weight"]
    batches = prompt_batches(tokenizer, num_batches=3)
    masks = sb.make_mask(sb.score(model, batches[:1], ["grad"])["grad"], density=0.05, scope="layer")
    dense, _ = load(tiny_causal_dirs["gpt2"], dtype=torch.float32)
    freeze_all_but(model, {})
    engine = SparseDeltaEngine(model, masks)
    sparse_opt = torch.optim.AdamW(engine.parameters(), lr=1e-2, weight_decay=0.0)
    trainable = {n: p for n, p in dense.named_parameters() if n in masks}
    freeze_all_but(dense, trainable)
    dense_opt = torch.optim.AdamW(list(trainable.values()), lr=1e-2, weight_decay=0.0)
    for batch in batches:
        model(**batch).loss.backward()
        sparse_opt.step(), sparse_opt.zero_grad()
        engine.sync_weights()
        dense(**batch).loss.backward()
        dense_masked_gradients_(dense, masks)
        dense_opt.step(), dense_opt.zero_grad()
    engine.remove()
    reference = dict(dense.named_parameters())
    for n, p in model.named_parameters():
        torch.testing.assert_close(p, reference[n], rtol=1e-5, atol=1e-6, msg=n)
    assert any(not torch.equal(p[masks[n]], load(tiny_causal_dirs["gpt2"], dtype=torch.float32)[0].get_parameter(n)[masks[n]])
               for n, p in model.named_parameters() if n in masks)


def test_prompt_batches_label_the_completion_only(offline_tokenizer):
    tokenizer = offline_tokenizer
    batch = encode_prompts(tokenizer, ["What is 2+2?", "A much longer question about many apples?"],
                           ["#### 4", "#### 12"], max_length=64, chat_template=False)
    for n, (prompt, completion) in enumerate([("What is 2+2?\n", "#### 4"),
                                              ("A much longer question about many apples?\n", "#### 12")]):
        target = batch["labels"][n][batch["labels"][n] != IGNORE_INDEX].tolist()
        assert target == tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        real = batch["input_ids"][n][batch["attention_mask"][n].bool()].tolist()
        assert real == tokenizer(prompt)["input_ids"] + target
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()
    # Too long: the completion is cut first, the prompt from the left; one target token always remains.
    short = encode_prompts(tokenizer, ["word " * 50], ["#### 4"], max_length=8, chat_template=False)
    assert short["input_ids"].shape[1] == 8 and int((short["labels"] != IGNORE_INDEX).sum()) >= 1
    # The chat template, when the tokenizer has one (and unless turned off).
    tokenizer.chat_template = SIMPLE_CHAT_TEMPLATE
    try:
        templated = encode_prompts(tokenizer, ["Hi?"], ["#### 1"], max_length=64)
        plain = encode_prompts(tokenizer, ["Hi?"], ["#### 1"], max_length=64, chat_template=False)
    finally:
        tokenizer.chat_template = None
    assert tokenizer.decode(templated["input_ids"][0]).startswith("<|user|>\nHi?\n<|assistant|>\n")
    assert not tokenizer.decode(plain["input_ids"][0]).startswith("<|user|>")


def test_jsonl_datasets_accept_the_usual_field_names(tmp_path):
    for prompt_key, completion_key in (("prompt", "completion"), ("question", "answer"), ("instruction", "output")):
        path = tmp_path / f"{prompt_key}.jsonl"
        path.write_text("\n".join(json.dumps({prompt_key: f"q{i}", completion_key: f"a{i}"}) for i in range(40)))
        train, held_out = sb.load_dataset(f"jsonl:{path}", "train"), sb.load_dataset(f"jsonl:{path}", "validation")
        assert train.prompts[:2] == ["q0", "q1"] and train.completions[-1] == "a37" and held_out.prompts == ["q38", "q39"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "no prompt field"}))
    with pytest.raises(sb.SalienceBenchError, match="needs one of the field pairs prompt/completion"):
        sb.load_dataset(f"jsonl:{bad}")
    with pytest.raises(sb.SalienceBenchError, match="does not exist"):
        sb.load_dataset(f"jsonl:{tmp_path / 'missing.jsonl'}")


def test_exact_match_reads_the_final_number(tiny_causal_dirs):
    from salience_bench.tasks import exact_match

    assert final_number("so 3 + 4 = 7\n#### 7") == "7" and final_number("#### 1,234.") == "1234"
    assert final_number("no answer") is None
    model, tokenizer = load(tiny_causal_dirs["llama"], dtype=torch.float32)
    data = sb.load_dataset("gsm8k", "test")
    answers = {data.prompts[0]: data.completions[0], data.prompts[1]: "#### 0", data.prompts[2]: data.completions[2]}

    def answer(prompt_ids):  # right for prompts 0 and 2, wrong for 1, in whatever order they come
        text = tokenizer.decode(prompt_ids, skip_special_tokens=True)
        return next(a for p, a in answers.items() if p in text)

    def generate(input_ids, **kwargs):  # a stand-in that "answers" the prompts
        rows = [torch.tensor(tokenizer(answer(ids), add_special_tokens=False)["input_ids"]) for ids in input_ids]
        width = max(len(r) for r in rows)
        rows = [torch.cat([r, torch.full((width - len(r),), tokenizer.pad_token_id)]) for r in rows]
        return torch.cat([input_ids, torch.stack(rows)], dim=1)

    model.generate = generate  # the stand-in is set on this test's own model object
    assert exact_match(model, tokenizer, data, examples=3, max_length=256, max_new_tokens=8, chat_template=True,
                       device=torch.device("cpu"), batch_size=2) == pytest.approx(2 / 3)


def test_cli_scores_and_trains_a_causal_lm_on_jsonl_data(tiny_causal_dirs, tmp_path):
    data = tmp_path / "data.jsonl"
    gsm = sb.load_dataset("gsm8k", "train")
    data.write_text("\n".join(json.dumps({"instruction": q, "output": a}) for q, a in zip(gsm.prompts[:60], gsm.completions[:60])))
    out = tmp_path / "run"
    result = run_cli("--model", str(tiny_causal_dirs["llama"]), "--dataset", f"jsonl:{data}", "--metrics", "grad,fisher,wanda",
                     "--batches", "2", "--batch-size", "4", "--max-length", "96", "--train", "--steps", "3",
                     "--baselines", "full,lora", "--train-batch-size", "4", "--eval-examples", "2", "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = pd.read_csv(out / "downstream.csv")
    assert set(rows.method) == {"sparse", "full", "lora", "base"} and (rows.eval_perplexity > 1).all()
    assert rows.eval_accuracy.between(0, 1).all()  # exact match of the generated answers
    base = rows[rows.method == "base"].iloc[0]  # the untrained model: the zero point of every other row
    assert base.steps == 0 and base.trainable_params == 0 and base.train_flops == 0
    assert (rows.exact_match_n == 2).all()
    assert ((rows.exact_match_low <= rows.eval_accuracy) & (rows.eval_accuracy <= rows.exact_match_high)).all()
    losses = pd.read_csv(out / "train_loss.csv")  # every training step's loss, per run; none for base
    assert sorted(losses.groupby("method").step.max().items()) == [("full", 3), ("lora", 3), ("sparse", 3)]
    assert all(math.isfinite(x) for x in rows.eval_loss)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["max_length"] == 96 and manifest["config"]["task"] == "auto"
    assert (out / "figures" / "accuracy.png").is_file()


def test_cli_task_and_dataset_must_fit(tiny_causal_dirs, tmp_path):
    result = run_cli("--model", str(tiny_causal_dirs["gpt2"]), "--dataset", "sst2", "--out", str(tmp_path / "a"), "--quiet")
    assert result.returncode == 2 and "pass --task classification" in result.stderr
    ok = run_cli("--model", str(tiny_causal_dirs["llama"]), "--dataset", "sst2", "--task", "classification",
                 "--batches", "2", "--batch-size", "4", "--max-length", "16", "--no-figures", "--out", str(tmp_path / "b"),
                 "--quiet")
    assert ok.returncode == 0, ok.stderr[-2000:]  # a decoder with a new classification head
    gsm = run_cli("--model", str(tiny_causal_dirs["gpt2"]), "--dataset", "gsm8k", "--metrics", "grad,snip",
                  "--batches", "2", "--batch-size", "2", "--max-length", "64", "--no-figures", "--out", str(tmp_path / "c"),
                  "--quiet")
    assert gsm.returncode == 0, gsm.stderr[-2000:]


def test_exact_match_interval_is_wilsons_score_interval():
    from salience_bench.tasks import exact_match_columns

    for hits, n in ((0, 1319), (18, 1319), (3, 7), (7, 7)):
        z = 1.959963984540054
        p = hits / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        columns = exact_match_columns(p, n)
        assert columns["exact_match_n"] == n
        assert columns["exact_match_low"] == pytest.approx(max(0.0, centre - half), abs=1e-12)
        assert columns["exact_match_high"] == pytest.approx(min(1.0, centre + half), abs=1e-12)
    assert math.isnan(exact_match_columns(math.nan, 0)["exact_match_low"])


def test_the_base_model_runs_once_whatever_the_seeds():
    from salience_bench.training.suite import planned_runs

    assert planned_runs(["grad"], ["full", "base"], [3, 4]) == [
        ("sparse", "grad", 3), ("full", "", 3), ("base", "", 3), ("sparse", "grad", 4), ("full", "", 4)]


def test_loss_evaluation_batches_fit_their_logits_in_memory():
    from salience_bench.tasks import get_task
    from salience_bench.training.loop import TrainConfig

    def loss_eval_batch_size(config, vocab, task, device):
        return get_task(task).eval_batch_size(config, vocab, device)

    config, cpu = TrainConfig(max_length=512, eval_batch_size=128), torch.device("cpu")
    # 4 GiB for B × 512 × V float32 logits and two copies: 2 examples of Gemma-3's vocabulary, 14 of SmolLM2's
    assert loss_eval_batch_size(config, 262_144, "causal-lm", cpu) == 4 * 2**30 // (3 * 4 * 512 * 262_144) == 2
    assert loss_eval_batch_size(config, 49_152, "causal-lm", cpu) == 14
    assert loss_eval_batch_size(config, 300, "causal-lm", cpu) == 128  # never more than eval_batch_size
    assert loss_eval_batch_size(config, 262_144, "classification", cpu) == 128  # a classifier's logits are tiny
    assert loss_eval_batch_size(TrainConfig(max_length=10**9), 10**6, "causal-lm", cpu) == 1
