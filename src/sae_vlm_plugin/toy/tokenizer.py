"""A word-level tokenizer for the toy models, built offline with the ``tokenizers`` library.

Ids: ``<pad>`` 0, ``<unk>`` 1, ``<s>`` 2, ``</s>`` 3, then the extra special tokens, then the
words. Text is lower-cased and split on whitespace and punctuation; every encoding is
``<s> ... </s>`` when ``add_eos`` (the CLIP text tower pools at the first ``</s>``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

SPECIAL_TOKENS = ("<pad>", "<unk>", "<s>", "</s>")
PUNCTUATION = (".", ",", "?", "!", ":", "'", "-")


def word_level_tokenizer(
    words: Sequence[str], extra_special: Sequence[str] = (), add_eos: bool = True
) -> Any:
    """A ``PreTrainedTokenizerFast`` over ``words`` (duplicates ignored) and punctuation."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tokens = list(dict.fromkeys([*SPECIAL_TOKENS, *extra_special, *words, *PUNCTUATION]))
    vocab = {token: i for i, token in enumerate(tokens)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    single = "<s> $A </s>" if add_eos else "<s> $A"
    backend.post_processor = processors.TemplateProcessing(
        single=single, special_tokens=[("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        additional_special_tokens=list(extra_special),
        model_input_names=["input_ids", "attention_mask"],
    )
