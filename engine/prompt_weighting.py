"""Weighted prompts (``promptWeighting``) with the ``compel`` package, on the pipeline's own tokenizers and encoders.

Two syntaxes: ``compel`` (compel's own: ``(word)1.3``, ``word++``, ``word--``,
``("a", "b").blend(0.7, 0.3)``, ``("a", "b").and()``) and ``sdEmbeds``
(AUTOMATIC1111's: ``(word:1.3)``, ``(word)`` = ×1.1, ``[word]`` = ÷1.1), which is
rewritten into compel's before encoding.  Either way long prompts are encoded
in 77-token chunks and concatenated, never cut, and the prompt and negative
prompt are padded to the same length.  Without ``promptWeighting`` nothing
here runs: the plain path is byte for byte what it was.

SD-1.x: the text encoder's last layer, normalised (``clipSkip`` 1: the
penultimate one, normalised, as diffusers does).  SDXL: both encoders'
penultimate layers, not normalised, and the second's pooled output, as
diffusers' ``encode_prompt``.
"""

from __future__ import annotations

import re
from typing import Any

from engine.errors import InvalidInput

_A1111_WEIGHT = re.compile(r"\(([^()]+?):\s*([0-9]*\.?[0-9]+)\s*\)")
_A1111_UP = re.compile(r"\(([^():]+)\)(?![0-9.+-])")
_A1111_DOWN = re.compile(r"\[([^\[\]]+)\]")


def from_a1111(prompt: str) -> str:
    """AUTOMATIC1111's weighting rewritten in compel's syntax: ``(w:1.3)`` → ``(w)1.3``, ``(w)`` → ``(w)1.1``, ``[w]`` → ``(w)0.909``."""
    prompt = _A1111_WEIGHT.sub(lambda m: f"({m.group(1)}){m.group(2)}", prompt)
    prompt = _A1111_UP.sub(lambda m: f"({m.group(1)})1.1", prompt)
    return _A1111_DOWN.sub(lambda m: f"({m.group(1)}){1 / 1.1:.4f}", prompt)


def _compel(pipe: Any, xl: bool, clip_skip: int | None) -> Any:
    from compel import Compel, ReturnedEmbeddingsType

    if xl and pipe.text_encoder is None:  # SDXL's refiner layout: the second encoder alone, pooled
        return Compel(tokenizer=pipe.tokenizer_2, text_encoder=pipe.text_encoder_2,
                      returned_embeddings_type=ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED,
                      requires_pooled=True, truncate_long_prompts=False, device=pipe.unet.device)
    if xl:
        return Compel(tokenizer=[pipe.tokenizer, pipe.tokenizer_2], text_encoder=[pipe.text_encoder, pipe.text_encoder_2],
                      returned_embeddings_type=ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED,
                      requires_pooled=[False, True], truncate_long_prompts=False, device=pipe.unet.device)
    if clip_skip not in (None, 0, 1):
        raise InvalidInput("promptWeighting works with clipSkip 0 or 1 on SD-1.x models", parameter="clipSkip")
    kind = ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NORMALIZED if clip_skip == 1 else ReturnedEmbeddingsType.LAST_HIDDEN_STATES_NORMALIZED
    return Compel(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, returned_embeddings_type=kind,
                  truncate_long_prompts=False, device=pipe.unet.device)


def weighted_embeddings(pipe: Any, mode: str, prompt: str, negative: str | None, clip_skip: int | None, xl: bool) -> dict[str, Any]:
    """The pipeline call's ``prompt_embeds`` (and negative; SDXL: pooled too) for a weighted prompt."""
    if mode.lower() == "sdembeds":
        prompt, negative = from_a1111(prompt), from_a1111(negative or "")
    compel = _compel(pipe, xl, clip_skip)
    try:
        if xl:
            positive, pooled = compel(prompt)
            negative_embeds, negative_pooled = compel(negative or "")
        else:
            positive, negative_embeds = compel(prompt), compel(negative or "")
    except Exception as exc:  # compel's parser errors (unbalanced parentheses, a bad .blend) are the prompt's fault
        raise InvalidInput(f"the prompt cannot be parsed as {mode} weighting: {str(exc)[:200]}", parameter="positivePrompt") from None
    positive, negative_embeds = compel.pad_conditioning_tensors_to_same_length([positive, negative_embeds])
    out = {"prompt_embeds": positive, "negative_prompt_embeds": negative_embeds}
    if xl:
        out.update(pooled_prompt_embeds=pooled, negative_pooled_prompt_embeds=negative_pooled)
    return out
