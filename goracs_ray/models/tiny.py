"""Tiny LLaMA-architecture causal LMs with a BPE tokenizer trained on the catalog, for CPU runs.

The result is a normal Hugging Face model directory (``config.json``, ``model.safetensors``,
``tokenizer.json``, ...) that ``AutoModelForCausalLM.from_pretrained`` and
``AutoTokenizer.from_pretrained`` load offline, so demos and tests go through the same code paths
as a 7B model.

Tokenizer: byte-level BPE (GPT-2/LLaMA-3 style pre-tokenisation, no normaliser), special tokens
``<unk>``, ``<s>`` (bos, prepended by the post-processor), ``</s>`` (eos) and ``<pad>``. The Alpaca
template and the answers are added to the training text with a high weight, so the template words,
``"Yes"``/``"No"`` (the CTR answer right after ``"### Response:\\n"``) and ``" Yes"``/``" No"``
are each one token. CTR uses the ids of ``"Yes"`` and ``"No"`` *without* a leading space, see
:func:`goracs_ray.models.losses.ctr_token_ids`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from goracs_ray.data.prompts import ALPACA_TEMPLATE

__all__ = ["ANSWER_WORDS", "SPECIAL_TOKENS", "build_tiny_llm"]

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = {
    "unk_token": "<unk>",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "pad_token": "<pad>",
}
"""The tokenizer's special tokens (ids 0..3 in this order)."""

ANSWER_WORDS = ("Yes", "No")
"""Words that must be single tokens, with and without a leading space (CTR answers)."""

_BOOST = 200  # min copies of the template/answer text, so BPE merges them into whole words


def _train_tokenizer(texts: Sequence[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(SPECIAL_TOKENS.values())
    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    template = ALPACA_TEMPLATE.format(instruction="", input="")
    answers = "\n".join(f"{w}\n {w}" for w in ANSWER_WORDS)  # "Yes\n Yes\nNo\n No"
    # As frequent as the corpus is long: BPE merges by pair counts, so a fixed count loses to
    # the catalog's own merges once the corpus is large (ml-100k: 80k prompts).
    boost = [template, answers] * max(_BOOST, len(texts))

    def corpus():
        yield from boost
        yield from texts

    tok.train_from_iterator(corpus(), trainer=trainer, length=len(texts) + len(boost))
    bos = SPECIAL_TOKENS["bos_token"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tok.token_to_id(bos))]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)
    fast.padding_side = "right"
    for word in ANSWER_WORDS:
        for text in (word, " " + word):
            ids = fast.encode(text, add_special_tokens=False)
            if len(ids) != 1:
                raise ValueError(
                    f"tokenizer splits {text!r} into {len(ids)} tokens; raise `vocab_size` "
                    f"(now {vocab_size}) so the CTR answers are single tokens"
                )
    return fast


def _pretrain(model, tokenizer, texts: Sequence[str], *, steps: int, seed: int, lr: float) -> None:
    """A few AdamW steps of next-token prediction on ``texts`` (packed into 64-token rows)."""
    from goracs_ray.models.losses import causal_lm_loss

    gen = torch.Generator().manual_seed(seed)
    ids = [i for t in texts for i in tokenizer.encode(t) + [tokenizer.eos_token_id]]
    block = min(64, model.config.max_position_embeddings)
    n_rows = max(1, len(ids) // block)
    data = torch.tensor(ids[: n_rows * block] or ids, dtype=torch.int64).view(n_rows, -1)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        rows = data[torch.randint(0, data.shape[0], (min(16, data.shape[0]),), generator=gen)]
        loss = causal_lm_loss(model(input_ids=rows).logits, rows).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % max(1, steps // 5) == 0 or step == steps - 1:
            logger.info("tiny LM pretraining step %d/%d loss %.3f", step + 1, steps, loss.item())
    model.eval()


def build_tiny_llm(
    texts: Sequence[str],
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    vocab_size: int = 1024,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 128,
    max_position_embeddings: int = 512,
    pretrain_steps: int = 0,
    pretrain_lr: float = 3e-3,
    overwrite: bool = False,
) -> Path:
    """Build and save a tiny ``LlamaForCausalLM`` plus a BPE tokenizer trained on ``texts``.

    Parameters
    ----------
    texts : sequence of str
        Catalog text (item titles, prompts, full training texts) for the tokenizer and pretraining.
    out_dir : path
        Output HF model directory, written atomically.
    seed : int
        Seeds the random init and the pretraining batches; same inputs + seed → same weights.
    vocab_size : int
        Target BPE vocabulary size (including 4 special tokens and the 256 byte symbols).
    hidden_size, num_layers, num_heads, intermediate_size, max_position_embeddings : int
        LlamaConfig sizes (``num_key_value_heads = num_heads``).
    pretrain_steps : int
        AdamW steps (batch 16 × 64 tokens) of next-token prediction on ``texts``; 0 keeps the
        random init.
    pretrain_lr : float
        Learning rate of that pretraining.
    overwrite : bool
        Replace an existing ``out_dir``.

    Returns
    -------
    Path
        ``out_dir``.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    from goracs_ray.io import atomic_dir

    if not texts:
        raise ValueError("`texts` is empty: give catalog text to train the tokenizer on")
    if hidden_size % num_heads:
        raise ValueError(f"`hidden_size` ({hidden_size}) must be divisible by `num_heads`")
    if vocab_size < 300:
        raise ValueError(f"`vocab_size` must be ≥ 300 (256 bytes + specials), got {vocab_size}")
    tokenizer = _train_tokenizer(texts, vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        initializer_range=1.0 / math.sqrt(hidden_size),
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    if pretrain_steps > 0:
        _pretrain(model, tokenizer, texts, steps=pretrain_steps, seed=seed, lr=pretrain_lr)
    with atomic_dir(out_dir, overwrite=overwrite) as part:
        model.save_pretrained(part)
        tokenizer.save_pretrained(part)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info(
        "saved tiny LLaMA (%d parameters, vocab %d) to %s", n_params, len(tokenizer), out_dir
    )
    return Path(out_dir)
