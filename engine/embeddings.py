"""Textual-inversion embeddings, applied to one request and removed after it.

A request names embeddings as ``embeddings: [{model: AIR, weight?}]``.  Each
uploaded embedding (category ``embeddings``, type ``positive`` or
``negative``) has a *trigger word*: the first word of its
``positiveTriggerWords`` (for a negative embedding without them, of its
``negativeTriggerWords``), else the AIR's id (``team:easyneg@1`` →
``easyneg``).

How a request triggers it
    The prompt of the embedding's type (``positivePrompt`` for a positive
    embedding, ``negativePrompt`` for a negative one) is searched for the
    trigger word (a whole word, case-insensitive, as CLIP lowercases text
    anyway).  Every occurrence is replaced by a private token that carries
    the embedding's vectors; if the word does not occur, the token is
    appended (``", "``-separated; a missing negative prompt becomes the token
    alone).  The private token (``<wisp-ti-N>``) never collides with the
    model's vocabulary, so any trigger word works, even one that is an
    ordinary word of the vocabulary.

``weight``
    Scales the embedding's vectors (default 1.0).  ``weight: 0`` applies
    nothing at all: the prompt is left untouched, so the image is the one
    without the embedding.

File formats (safetensors only)
    A1111/SD-1.x ``{"emb_params": [n, d]}``; A1111 converted from ``.pt``
    ``{"string_to_param.*": [n, d]}``; diffusers' ``{"<token>": [n, d] or
    [d]}``; SDXL ``{"clip_l": [n, 768], "clip_g": [n, 1280]}`` (one set of
    vectors per text encoder).  ``n`` vectors make a multi-vector token
    (diffusers expands it in the prompt).

Isolation
    The tokens are added to the tokenizer(s) and the vectors to the text
    encoder(s)' input embeddings with diffusers' ``load_textual_inversion``
    right before the run, and removed with ``unload_textual_inversion``
    right after it (under the model's lock), after which the text encoder's
    original embedding module is put back: the next request computes
    exactly what it would have computed had this one never run.
"""

from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

from engine.errors import EngineError, InvalidInput
from protocol.errors import ErrorCode

log = logging.getLogger("wisp.engine.embeddings")

TOKEN_PREFIX = "<wisp-ti-"
SDXL_PARTS = ("clip_l", "clip_g")
"""The tensors of an SDXL embedding, for ``text_encoder`` and ``text_encoder_2`` in that order."""


class EmbeddingLoadError(EngineError):
    """An embedding file cannot be applied to the model (format or width)."""

    code = ErrorCode.MODEL_LOAD_FAILED


@dataclass(frozen=True)
class EmbeddingUse:
    """One embedding of a request, resolved (see :meth:`engine.models.ModelLibrary.resolve_embedding`)."""

    key: str  # the file's sha256
    path: Path
    trigger: str
    kind: str  # "positive" | "negative"
    weight: float = 1.0
    parameter: str = "embeddings"  # e.g. ``embeddings[0].model``, for errors


def trigger_word(air: str, meta: dict[str, Any], kind: str) -> str:
    """The word that triggers an uploaded embedding (see the module docstring)."""
    sources = [meta.get("positiveTriggerWords")]
    if kind == "negative":
        sources.append(meta.get("negativeTriggerWords"))
    for words in sources:
        if isinstance(words, list):
            words = ", ".join(words)
        if words:
            first = next((w for w in re.split(r"[,\s]+", str(words)) if w), None)
            if first:
                return first
    return air.split(":", 1)[-1].split("@", 1)[0]


# ---- files ------------------------------------------------------------------------


def parts_of(tensors: dict[str, Any], name: str = "embedding") -> dict[str, Any]:
    """``{"": vectors}`` (one text encoder) or ``{"clip_l": …, "clip_g": …}`` (SDXL), each ``[n, d]``.

    ``tensors`` maps names to tensors (or anything with ``.shape``); raises
    :class:`EmbeddingLoadError` naming what is wrong.
    """
    names = set(tensors)
    if names & set(SDXL_PARTS):
        if names != set(SDXL_PARTS):
            raise EmbeddingLoadError(f"{name}: an SDXL embedding holds exactly clip_l and clip_g")
        found = {k: tensors[k] for k in SDXL_PARTS}
        if len({_count(v, name) for v in found.values()}) != 1:
            raise EmbeddingLoadError(f"{name}: clip_l and clip_g hold different numbers of vectors")
        return found
    if names == {"emb_params"}:
        found = {"": tensors["emb_params"]}
    elif names and all(k.startswith("string_to_param.") for k in names):
        if len(names) != 1:
            raise EmbeddingLoadError(f"{name}: holds {len(names)} embeddings (string_to_param.*); upload one per file")
        found = {"": tensors[next(iter(names))]}
    elif len(names) == 1 and "." not in next(iter(names)):
        found = {"": tensors[next(iter(names))]}  # diffusers: {"<token>": vectors}
    elif names and all("." not in k for k in names):
        raise EmbeddingLoadError(f"{name}: holds {len(names)} tokens; upload one embedding per file")
    else:
        raise EmbeddingLoadError(f"{name}: not a textual-inversion embedding (emb_params, string_to_param.*, clip_l/clip_g or one token)")
    _count(found[""], name)
    return found


def _count(vectors: Any, name: str) -> int:
    shape = tuple(vectors.shape)
    if len(shape) == 1 and shape[0] > 0:
        return 1
    if len(shape) == 2 and shape[0] >= 1 and shape[1] > 0:
        return shape[0]
    raise EmbeddingLoadError(f"{name}: embedding vectors must be [vectors, width], got shape {list(shape)}")


def read_embedding(use: EmbeddingUse) -> dict[str, Any]:
    """The parts of ``use``'s file as float32 ``[n, d]`` tensors, scaled by its weight."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from engine.registry.integrity import verify_stored_file

    verify_stored_file(use.path, EmbeddingLoadError, use.parameter)
    try:
        tensors = load_file(str(use.path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise EmbeddingLoadError(f"{use.path.name} is not a readable safetensors file", parameter=use.parameter) from exc
    try:
        parts = parts_of(tensors, use.trigger)
    except EmbeddingLoadError as exc:
        exc.parameter = use.parameter
        raise
    return {k: v.to(torch.float32).reshape(-1, v.shape[-1]) * use.weight for k, v in parts.items()}


# ---- applying them -----------------------------------------------------------------


def _encoders(pipe: Any) -> list[tuple[str, Any, Any]]:
    """(part of the file, tokenizer, text encoder) of each text encoder of ``pipe``."""
    if getattr(pipe, "text_encoder_2", None) is not None:
        return [(SDXL_PARTS[0], pipe.tokenizer, pipe.text_encoder), (SDXL_PARTS[1], pipe.tokenizer_2, pipe.text_encoder_2)]
    return [("", pipe.tokenizer, pipe.text_encoder)]


def _rewrite(prompt: str | None, trigger: str, token: str) -> str:
    """Replace the whole word ``trigger`` in ``prompt`` by ``token``; append ``token`` if absent."""
    if not prompt:
        return token
    pattern = re.compile(rf"(?<![\w-]){re.escape(trigger)}(?![\w-])", re.IGNORECASE)
    rewritten, count = pattern.subn(lambda _: token, prompt)
    return rewritten if count else f"{prompt}, {token}"


def rewrite_prompts(spec: Any, uses: list[tuple[int, EmbeddingUse]]) -> Any:
    """``spec`` with each embedding's trigger word turned into its private token (see the module docstring)."""
    prompt, negative = spec.prompt, spec.negative_prompt
    for index, use in uses:
        token = f"{TOKEN_PREFIX}{index}>"
        if use.kind == "negative":
            negative = _rewrite(negative, use.trigger, token)
        else:
            prompt = _rewrite(prompt, use.trigger, token)
    return replace(spec, prompt=prompt, negative_prompt=negative)


@dataclass(frozen=True)
class _Snapshot:
    """A text encoder's input embedding as loaded: transformers resizes the module *in place*
    (``weight.data`` is replaced), so the module, its tensor and its sizes are kept and put back."""

    module: Any
    data: Any
    num_embeddings: int
    padding_idx: int | None

    @classmethod
    def of(cls, module: Any) -> "_Snapshot":
        return cls(module, module.weight.data, module.num_embeddings, module.padding_idx)

    def restore(self) -> Any:
        self.module.weight.data = self.data
        self.module.num_embeddings = self.num_embeddings
        self.module.padding_idx = self.padding_idx
        return self.module


@contextmanager
def textual_inversions(pipe: Any, spec: Any) -> Iterator[Any]:
    """``with textual_inversions(base_pipe, spec) as spec:`` — the request's embeddings loaded for the block.

    Yields ``spec`` with its prompts rewritten to the private tokens; the
    tokens and vectors are gone again when the block exits (normally or
    not).  Call it outside ``torch.inference_mode`` (the resized embedding
    is a parameter) and under the model's lock.
    """
    uses = [(i, u) for i, u in enumerate(spec.embeddings) if u.weight != 0]
    if not uses:
        yield spec
        return
    import torch

    encoders = _encoders(pipe)
    loaded = [(i, u, read_embedding(u)) for i, u in uses]
    for _, use, parts in loaded:  # every check before anything changes
        wanted = [p for p, _, _ in encoders]
        if sorted(parts) != sorted(wanted):
            kind = "SDXL (clip_l/clip_g)" if "clip_l" in parts else "single text encoder"
            raise InvalidInput(f"the embedding {use.trigger!r} is a {kind} embedding; this model needs "
                               f"{'clip_l/clip_g' if len(wanted) == 2 else 'one set of vectors'}", parameter=use.parameter)
        for part, _, encoder in encoders:
            width = encoder.get_input_embeddings().weight.shape[-1]
            if parts[part].shape[-1] != width:
                raise InvalidInput(
                    f"the embedding {use.trigger!r} has vectors {parts[part].shape[-1]} wide; "
                    f"this model's text encoder takes {width}", parameter=use.parameter,
                )
    saved = [(tok, enc, _Snapshot.of(enc.get_input_embeddings()), len(tok), enc.config.vocab_size) for _, tok, enc in encoders]
    added: list[tuple[Any, Any, list[str]]] = []
    try:
        with torch.no_grad():
            for part, tokenizer, encoder in encoders:
                tokens = [f"{TOKEN_PREFIX}{i}>" for i, _, _ in loaded]
                vectors = [parts[part].to(encoder.dtype) for _, _, parts in loaded]
                count = sum(v.shape[0] for v in vectors)
                # diffusers resizes to this size itself, with "mean resizing" (a covariance of the
                # whole vocabulary: ~0.5 s for CLIP-L, wasted since every new row is overwritten).
                encoder.resize_token_embeddings(len(tokenizer) + count, mean_resizing=False)
                names = [t if v.shape[0] == 1 else [t] + [f"{t}_{j}" for j in range(1, v.shape[0])] for t, v in zip(tokens, vectors)]
                added.append((tokenizer, encoder, [n for group in names for n in ([group] if isinstance(group, str) else group)]))
                pipe.load_textual_inversion(vectors, token=tokens, tokenizer=tokenizer, text_encoder=encoder)
        yield rewrite_prompts(spec, [(i, u) for i, u, _ in loaded])
    finally:
        for tokenizer, encoder, names in added:
            try:
                if any(n in tokenizer.added_tokens_encoder for n in names):
                    pipe.unload_textual_inversion(names, tokenizer=tokenizer, text_encoder=encoder)
            except Exception:  # the embedding module is put back below whatever happened here
                log.exception("unloading textual-inversion tokens failed")
        for tokenizer, encoder, embedding, length, vocab_size in saved:
            encoder.set_input_embeddings(embedding.restore())
            encoder.config.vocab_size = vocab_size
            if len(tokenizer) != length:
                log.error("tokenizer still holds %d extra token(s) after unloading embeddings", len(tokenizer) - length)
