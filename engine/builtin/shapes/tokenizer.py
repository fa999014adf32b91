"""A CLIP BPE tokenizer whose merges make each word of the shapes world one token.

It is the real ``CLIPTokenizer`` (the class every SD-1.x checkpoint ships), with
the byte-level vocabulary of ``wisp:tiny-sd15@1`` plus one merge chain per word
in :data:`engine.builtin.shapes.scene.WORDS`.  Any other text still tokenizes,
byte by byte, so an unknown word such as a LoRA's trigger ("sks") has tokens of
its own that training can give a meaning to.
"""

from __future__ import annotations

from transformers import CLIPTokenizer

from engine.builtin.shapes.scene import WORDS
from engine.builtin.tiny_sd15 import byte_level_vocab


def build_tokenizer(words: tuple[str, ...] = WORDS) -> CLIPTokenizer:
    """Add merges (at the end of the list, so earlier words keep theirs) until every word is a single token."""
    base = byte_level_vocab()
    specials = ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for t, i in base.items() if t not in specials}
    merges: list[tuple[str, str]] = []
    for _ in range(20):
        tokenizer = _make(vocab, merges, specials)
        pending = False
        for word in words:
            pieces = tokenizer.tokenize(word)
            if len(pieces) > 1:
                pending = True
                merged = pieces[0] + pieces[1]
                merge = (pieces[0], pieces[1])
                if merge not in merges:
                    merges.append(merge)
                vocab.setdefault(merged, len(vocab))
        if not pending:
            return tokenizer
    raise RuntimeError("word merges did not converge")


def _make(vocab: dict[str, int], merges: list[tuple[str, str]], specials: list[str]) -> CLIPTokenizer:
    full = dict(vocab)
    for token in specials:
        full[token] = len(full)
    return CLIPTokenizer(vocab=full, merges=list(merges), model_max_length=77)
