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

import dataclasses
import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from goracs_ray.data.prompts import ALPACA_TEMPLATE
from goracs_ray.models.config import ModelConfig

__all__ = [
    "ANSWER_WORDS",
    "CORPUS_FILE",
    "RECORD_FILE",
    "SPECIAL_TOKENS",
    "build_catalog_model",
    "build_model",
    "build_tiny_llm",
    "catalog_corpus",
]

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
_EVAL_EVERY = 50  # pretraining steps between two corpus-loss checks
_MIN_GAIN = 0.005  # relative corpus-loss gain that counts as progress
CORPUS_FILE = "pretraining_corpus.txt"
"""The tiny model's pretraining text, one document a line (written into the model dir)."""
RECORD_FILE = "pretraining.json"
"""Corpus size, steps, stop reason and loss history of the pretraining (in the model dir)."""


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


def _pretrain(
    model, tokenizer, texts: Sequence[str], *, steps: int, seed: int, lr: float, patience: int
) -> dict:
    """AdamW next-token prediction on ``texts`` (packed into 64-token rows, batch 16) until the
    loss stops improving: every ``_EVAL_EVERY`` steps the mean loss over (up to 256 rows of) the
    corpus is measured; training stops after ``patience`` checks without a relative gain of
    ``_MIN_GAIN`` over the best, or after ``steps`` steps. Returns the record (history, reason).
    """
    from goracs_ray.models.losses import causal_lm_loss

    gen = torch.Generator().manual_seed(seed)
    ids = [i for t in texts for i in tokenizer.encode(t) + [tokenizer.eos_token_id]]
    block = min(64, model.config.max_position_embeddings)
    n_rows = max(1, len(ids) // block)
    data = torch.tensor(ids[: n_rows * block] or ids, dtype=torch.int64).view(n_rows, -1)
    probe = data[torch.randperm(data.shape[0], generator=gen)[:256]]
    opt = torch.optim.AdamW(model.parameters(), lr=lr)

    def corpus_loss() -> float:
        model.eval()
        with torch.no_grad():
            value = causal_lm_loss(model(input_ids=probe).logits, probe).mean().item()
        model.train()
        return value

    history, best, bad, reason = [], math.inf, 0, "max_steps"
    lowest, best_state = math.inf, None
    model.train()
    for step in range(1, steps + 1):
        rows = data[torch.randint(0, data.shape[0], (min(16, data.shape[0]),), generator=gen)]
        loss = causal_lm_loss(model(input_ids=rows).logits, rows).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % _EVAL_EVERY == 0 or step == steps:
            value = corpus_loss()
            history.append({"step": step, "corpus_loss": round(value, 5)})
            logger.info("tiny LM pretraining step %d/%d corpus loss %.3f", step, steps, value)
            if value < lowest:
                lowest, best_state = (
                    value,
                    {k: v.detach().clone() for k, v in model.state_dict().items()},
                )
            if value < best * (1 - _MIN_GAIN):
                best, bad = value, 0
            else:
                bad += 1
                if bad >= patience:
                    reason = "plateau"
                    break
    if best_state is not None:  # the weights of the lowest corpus loss seen
        model.load_state_dict(best_state)
    model.eval()
    return {
        "steps": history[-1]["step"] if history else 0,
        "best_corpus_loss": min((h["corpus_loss"] for h in history), default=None),
        "max_steps": steps,
        "stopped": reason,
        "corpus_rows": int(data.shape[0]),
        "row_tokens": int(data.shape[1]),
        "history": history,
    }


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
    pretrain_patience: int = 3,
    tokenizer_texts: Sequence[str] = (),
    overwrite: bool = False,
) -> Path:
    """Build and save a tiny ``LlamaForCausalLM`` plus a BPE tokenizer trained on ``texts``.

    Parameters
    ----------
    texts : sequence of str
        The pretraining corpus (and tokenizer text), e.g. :func:`catalog_corpus`: item text
        only, so that the model knows the catalog but not the users' interactions.
    out_dir : path
        Output HF model directory, written atomically.
    seed : int
        Seeds the random init and the pretraining batches; same inputs + seed → same weights.
    vocab_size : int
        Target BPE vocabulary size (including 4 special tokens and the 256 byte symbols).
    hidden_size, num_layers, num_heads, intermediate_size, max_position_embeddings : int
        LlamaConfig sizes (``num_key_value_heads = num_heads``).
    pretrain_steps : int
        At most this many AdamW steps (batch 16 × 64 tokens) of next-token prediction on
        ``texts``, fewer when the corpus loss stops improving; 0 keeps the random init.
    pretrain_lr : float
        Learning rate of that pretraining.
    pretrain_patience : int
        Corpus-loss checks (every 50 steps) without a 0.5 % gain before pretraining stops.
    tokenizer_texts : sequence of str
        Extra text for the tokenizer only, never pretrained on (e.g. the task's fixed
        instruction wording).
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
    if pretrain_patience < 1:
        raise ValueError(f"`pretrain_patience` must be ≥ 1, got {pretrain_patience}")
    tokenizer = _train_tokenizer([*texts, *tokenizer_texts], vocab_size)
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
    record: dict = {"steps": 0, "stopped": "no pretraining", "history": []}
    if pretrain_steps > 0:
        record = _pretrain(
            model,
            tokenizer,
            texts,
            steps=pretrain_steps,
            seed=seed,
            lr=pretrain_lr,
            patience=pretrain_patience,
        )
    n_tokens = sum(len(tokenizer.encode(t)) for t in texts)
    record = {"documents": len(texts), "tokens": n_tokens, "corpus": CORPUS_FILE, **record}
    with atomic_dir(out_dir, overwrite=overwrite) as part:
        model.save_pretrained(part)
        tokenizer.save_pretrained(part)
        (part / CORPUS_FILE).write_text("".join(t.replace("\n", " ") + "\n" for t in texts))
        (part / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    n_params = sum(p.numel() for p in model.parameters())
    logger.info(
        "saved tiny LLaMA (%d parameters, vocab %d) to %s", n_params, len(tokenizer), out_dir
    )
    return Path(out_dir)


def catalog_corpus(items) -> list[str]:
    """The pretraining corpus of a catalog: one document per item, its ``description`` (title,
    year, genres) where present, else its title. ``items``: a pyarrow Table in ITEM_SCHEMA.

    Only item facts, never interactions: the stand-in for an LLM that knows the catalog.
    """
    titles = items.column("title").to_pylist()
    if "description" in items.column_names:
        described = items.column("description").to_pylist()
        return [d if d else t for d, t in zip(described, titles)]
    return titles


def build_catalog_model(
    samples_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    overwrite: bool = False,
    **sizes,
) -> Path:
    """:func:`build_tiny_llm` pretrained on the catalog of a prepared samples dir.

    Pretraining text: :func:`catalog_corpus` of ``samples_dir/items.parquet``. The tokenizer
    also sees the distinct ``instruction`` strings of ``train.parquet`` (the task's fixed
    wording, the same for every sample), never a sample's input or answer. ``sizes``: the
    remaining :func:`build_tiny_llm` keywords (TinyModelConfig fields).
    """
    import pyarrow.parquet as pq

    samples_dir = Path(samples_dir)
    items_path = samples_dir / "items.parquet"
    if not items_path.is_file():
        raise FileNotFoundError(
            f"`{items_path}` does not exist: the tiny model is built from the prepared catalog; "
            "run `goracs prepare` first or pass the samples directory that holds items.parquet"
        )
    corpus = catalog_corpus(pq.read_table(items_path))
    wording: list[str] = []
    train_path = samples_dir / "train.parquet"
    if train_path.is_file():
        instructions = pq.read_table(train_path, columns=["instruction"]).column("instruction")
        wording = sorted(set(instructions.to_pylist()))
    return build_tiny_llm(
        corpus, out_dir, seed=seed, tokenizer_texts=wording, overwrite=overwrite, **sizes
    )


def build_model(
    model: ModelConfig,
    samples_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
) -> Path:
    """The tiny model that ``model`` describes (``model.tiny`` sizes and pretraining,
    ``model.seed``), pretrained on the catalog of ``samples_dir``, into ``out_dir`` (an existing
    ``out_dir`` needs ``overwrite``).

    The one builder behind the pipeline's ``model`` stage, `goracs features` without a model
    and `goracs model tiny`.
    """
    sizes = dataclasses.asdict(model.tiny)
    return build_catalog_model(samples_dir, out_dir, seed=model.seed, overwrite=overwrite, **sizes)
