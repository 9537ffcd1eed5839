"""A small Llama-like tokenizer for the `tiny` and `small` presets, built in code (no download).

It mirrors the parts of the Llama-2 SentencePiece tokenizer that OpenVLA relies on:

- ids 0/1/2 are `<unk>`, `<s>` (BOS, prepended to every encoding) and `</s>` (EOS);
- spaces become the word-start marker "▁", and the bare "▁" is its own token (Llama's id 29871), which the
  processor appends after "Out:" exactly as OpenVLA's `predict_action` does;
- the last `n_action_bins` ids of the base vocabulary are the action tokens (OpenVLA overwrites Llama's 256 least
  used tokens), and the base vocabulary size is a multiple of 64 like Llama's 32000, so the padded model vocabulary
  is base + 64 and OpenVLA's `text_config.vocab_size - pad_to_multiple_of` recovers it;
- `<PAD>` is an added token right after the base vocabulary (Llama: 32000).

Text is split into characters (printable ASCII and newline; anything else is `<unk>`) and merged back into whole
words for the prompt template and common manipulation words, so prompts stay short.
"""

from __future__ import annotations

import string

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<PAD>"
WORD_START = "▁"
VOCAB_MULTIPLE = 64

_ALPHABET = [WORD_START, "\n", *string.ascii_letters, *string.digits, *string.punctuation]
# Fragments that get a single token: the OpenVLA prompt template first, then common manipulation words.
_WHOLE_WORDS = [
    WORD_START + word
    for word in (
        "In: What action should the robot take to pick up put place push pull open close lift move stack insert "
        "turn on off in into onto of and a cube block can bowl plate drawer door peg hole cup object red green blue "
        "yellow left right top"
    ).split()
] + ["\nOut:"]


def _word_merges() -> list[tuple[str, str]]:
    """BPE merges that build each listed fragment left to right, deduplicated."""
    merges: list[tuple[str, str]] = []
    for word in _WHOLE_WORDS:
        for end in range(2, len(word) + 1):
            merge = (word[: end - 1], word[end - 1])
            if merge not in merges:
                merges.append(merge)
    return merges


def _text_tokens() -> list[str]:
    """Special tokens, single characters and merged words, in id order."""
    merged = ["".join(pair) for pair in _word_merges()]
    tokens = [UNK, BOS, EOS]
    for token in _ALPHABET + merged:
        if token not in tokens:
            tokens.append(token)
    return tokens


def tiny_base_vocab_size(n_action_bins: int) -> int:
    """Base vocabulary size (without `<PAD>`) for `n_action_bins` action tokens: a multiple of 64."""
    needed = len(_text_tokens()) + n_action_bins
    return -(-needed // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def build_tiny_tokenizer(n_action_bins: int, base_vocab_size: int | None = None) -> PreTrainedTokenizerFast:
    """Build the preset tokenizer deterministically; the last `n_action_bins` base ids are `<action_i>` tokens.

    The vocabulary between the text tokens and the action tokens is filled with `<unused_i>` tokens so that the
    base size is a multiple of 64 (see module docstring). `base_vocab_size` pads it to a given size instead, e.g.
    32000 for a stand-in of Llama-2's tokenizer in a random-init openvla-7b checkpoint.
    """
    if n_action_bins < 2:
        raise ValueError(f"n_action_bins must be >= 2, got {n_action_bins}")
    text_tokens = _text_tokens()
    vocab_size = base_vocab_size or tiny_base_vocab_size(n_action_bins)
    if vocab_size < tiny_base_vocab_size(n_action_bins) or vocab_size % VOCAB_MULTIPLE:
        raise ValueError(
            f"base_vocab_size={vocab_size} must be a multiple of {VOCAB_MULTIPLE} and at least "
            f"{tiny_base_vocab_size(n_action_bins)} (the text tokens plus {n_action_bins} action tokens)"
        )
    n_unused = vocab_size - len(text_tokens) - n_action_bins
    tokens = text_tokens + [f"<unused_{i}>" for i in range(n_unused)] + [f"<action_{i}>" for i in range(n_action_bins)]
    vocab = {token: index for index, token in enumerate(tokens)}

    backend = Tokenizer(models.BPE(vocab=vocab, merges=_word_merges(), unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement=WORD_START, prepend_scheme="first")
    backend.decoder = decoders.Metaspace(replacement=WORD_START, prepend_scheme="first")
    backend.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, vocab[BOS])])
    backend.add_special_tokens([UNK, BOS, EOS, PAD])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=BOS, eos_token=EOS, unk_token=UNK, pad_token=PAD, padding_side="left"
    )
