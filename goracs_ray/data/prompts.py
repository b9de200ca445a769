"""The Alpaca prompt wrapper used by BIGRec (SeqRec) and TALLRec (CTR); METHOD.md §7."""

from __future__ import annotations

__all__ = ["ALPACA_TEMPLATE", "format_full_text", "format_prompt"]

ALPACA_TEMPLATE = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request. \n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)


def format_prompt(instruction: str, input: str) -> str:  # noqa: A002 - the paper's field name
    """The model's prompt (everything before the answer); ends with ``"### Response:\\n"``."""
    return ALPACA_TEMPLATE.format(instruction=instruction, input=input)


def format_full_text(instruction: str, input: str, output: str) -> str:  # noqa: A002
    """Prompt followed by the answer: the text a causal LM is fine-tuned on."""
    return format_prompt(instruction, input) + output
