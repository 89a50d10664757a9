"""Offline stand-ins for models that cannot be downloaded here: a byte-level BPE tokenizer trained in a
second, and random-initialised causal LMs of any shape (tiny ones for tests, real shapes for GPU
benchmarks), saved as ordinary Hugging Face folders that ``--model <folder>`` loads."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch

EOS, PAD = "<|endoftext|>", "<|pad|>"

SIMPLE_CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
"""A minimal chat template (user turn, then the assistant's reply) for tests of the chat-template path."""


def byte_level_tokenizer(texts: Iterable[str], vocab_size: int = 512, *, chat_template: str | None = None,
                         padding_side: str = "right"):
    """A byte-level BPE trained on ``texts`` (a second or so), with eos and pad tokens, as a
    ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(list(texts), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token=EOS, pad_token=PAD, bos_token=EOS,
                                        padding_side=padding_side)
    if chat_template:
        tokenizer.chat_template = chat_template
    return tokenizer


def causal_lm_config(architecture: str, vocab_size: int, **shape):
    """A transformers config for ``architecture`` ("llama", "qwen2", "mistral", "gpt2", "gemma" …),
    ``shape`` in that family's own field names."""
    from transformers import AutoConfig

    return AutoConfig.for_model(architecture, vocab_size=vocab_size, **shape)


def save_random_causal_lm(folder: str | Path, architecture: str, tokenizer, *, seed: int = 0,
                          dtype: torch.dtype = torch.float32, **shape) -> Path:
    """A random-initialised causal LM and ``tokenizer`` saved in ``folder`` (``--model folder`` loads it)."""
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    config = causal_lm_config(architecture, len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                              eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id, **shape)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
