import os
import subprocess
import sys
import tempfile
from contextlib import contextmanager

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# GGUF conversions go to a cache of this test session (inherited by the CLI processes the tests start), not the
# user's, unless SALIENCE_BENCH_CACHE names one: then its converted models are reused.
os.environ.setdefault("SALIENCE_BENCH_CACHE", tempfile.mkdtemp(prefix="salience-bench-test-cache-"))

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification
from transformers.utils import logging as hf_logging

hf_logging.set_verbosity_error()

TINY = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
    max_position_embeddings=64, num_labels=2,
    initializer_range=0.2,  # larger than BERT's 0.02 so gradients are far from float underflow
)


@contextmanager
def gloo_group(rank: int, world: int, init_file: str):
    """A test worker's gloo process group: on success every rank meets at a barrier before the group is torn down,
    so no rank destroys it while another still talks to it (that aborted a 3-rank test in C++ once)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        yield
        dist.barrier()
    finally:
        dist.destroy_process_group()


def tiny_bert(seed: int = 0, vocab_size: int = 60, dtype=torch.float32) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    model = BertForSequenceClassification(BertConfig(vocab_size=vocab_size, **TINY))
    return model.to(dtype)


def tiny_batches(seed: int = 1, num_batches: int = 3, batch_size: int = 4, max_len: int = 9, vocab_size: int = 60):
    """Padded batches with different true lengths per example, as a tokenizer would make them."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(num_batches):
        lengths = torch.randint(3, max_len + 1, (batch_size,), generator=g)
        lengths[0] = max_len  # at least one example fills the batch
        ids = torch.randint(1, vocab_size, (batch_size, max_len), generator=g)
        mask = (torch.arange(max_len)[None, :] < lengths[:, None]).long()
        batches.append({
            "input_ids": ids * mask,  # 0 is the pad id
            "attention_mask": mask,
            "token_type_ids": torch.zeros_like(ids),
            "labels": torch.randint(0, 2, (batch_size,), generator=g),
        })
    return batches


@pytest.fixture
def model():
    return tiny_bert()


@pytest.fixture
def batches():
    return tiny_batches()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random BERT classifier saved with the bundled tokenizer, so the CLI can load it as a folder."""
    from transformers import AutoTokenizer

    import salience_bench as sb

    path = tmp_path_factory.mktemp("tiny-model")
    tokenizer = AutoTokenizer.from_pretrained(str(sb.models.bundled_model_path()))
    tiny_bert(vocab_size=tokenizer.vocab_size).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def run_cli(*args, env=None):
    """The CLI as a real process; ``env`` adds to (or overrides) this process's environment."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "salience_bench.compare", *args], capture_output=True, text=True, env=env)


def tiny_args(model_dir, out, *extra):
    return ["--model", str(model_dir), "--batches", "2", "--batch-size", "4", "--max-length", "16",
            "--out", str(out), "--quiet", *extra]


TINY_CAUSAL = {
    "llama": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=512),
    "gpt2": dict(n_embd=32, n_layer=2, n_head=4, n_positions=512),
    "qwen2": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=512),
    # Gemma-3's text model as in Gemma-3-270M, scaled down: a sliding-window layer (a window far shorter than the
    # prompts, so it matters) before a global one, (1 + w) RMSNorms around every block and on q and k, embeddings
    # scaled by √hidden, grouped-query attention and a head tied to the embeddings.
    "gemma3_text": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=1, head_dim=8, sliding_window=16,
                        layer_types=["sliding_attention", "full_attention"], max_position_embeddings=512,
                        query_pre_attn_scalar=8, tie_word_embeddings=True),
}


@pytest.fixture(scope="session")
def offline_tokenizer():
    """A byte-level BPE trained on GSM8K text in a second (nothing downloads)."""
    import salience_bench as sb
    from salience_bench.synthetic import byte_level_tokenizer

    data = sb.load_dataset("gsm8k", "train")
    return byte_level_tokenizer(data.texts[:1500], vocab_size=300)


@pytest.fixture(scope="session")
def tiny_causal_dirs(tmp_path_factory, offline_tokenizer):
    """Tiny random Llama, GPT-2 and Qwen2 causal LMs saved with the offline tokenizer, by architecture."""
    from salience_bench.synthetic import save_random_causal_lm

    root = tmp_path_factory.mktemp("tiny-causal")
    return {arch: save_random_causal_lm(root / arch, arch, offline_tokenizer, **shape)
            for arch, shape in TINY_CAUSAL.items()}
