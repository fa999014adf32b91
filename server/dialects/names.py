"""Model names as other APIs spell them → wisp AIRs.

Novita's ``model_name`` is a file-like name ("AnythingV5_v5PrtRE.safetensors",
its "model name in API"); stablediffusionapi/ModelsLab name models by
``model_id``.  wisp names every model by AIR, so a dialect name is resolved
in this order:

1. an AIR (``source:id@version``) is used as is — the native checks then
   decide whether the team may use it;
2. otherwise the models visible to the team (modelSearch's own query, so a
   private model of another team is never found) whose ``name`` equals the
   given name, or equals it without a ``.safetensors``/``.ckpt``/``.pt``/
   ``.bin`` extension, or whose AIR id equals that stem;
3. among several, the team's own private models come first, then public ones,
   newest first.
"""

from __future__ import annotations

import uuid

from protocol.models import ModelSearch, is_air, split_air
from server.dialects.bridge import NativeBridge
from server.dialects.errors import DialectError

_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".bin", ".pth")


def stem(name: str) -> str:
    lowered = name.lower()
    for ext in _EXTENSIONS:
        if lowered.endswith(ext):
            return name[: -len(ext)]
    return name


async def resolve_model(bridge: NativeBridge, team: str, name: str, categories: tuple[str, ...], parameter: str) -> str:
    """The AIR that ``name`` means for ``team``; raises ``modelNotFound`` naming ``parameter``."""
    name = name.strip()
    if is_air(name):
        return name
    key = stem(name)
    if not key or len(key) > 400:
        raise DialectError("invalidParameter", f"{parameter} must name a model", parameter=parameter)
    search = ModelSearch(taskUUID=str(uuid.uuid4()), search=key, limit=100)
    found = await bridge.gateway.engine.search_models(search, team)
    matches = [
        info for info in found.results
        if info.category in categories and (info.name in (name, key) or stem(info.name) == key or split_air(info.air)[1] == key)
    ]
    if not matches:
        kinds = " or ".join(categories)
        raise DialectError(
            "modelNotFound",
            f"no {kinds} named {name[:200]!r} is available to your team: upload it first, or pass its AIR",
            parameter=parameter,
        )
    matches.sort(key=lambda info: not info.private)  # stable: own private models first, then newest
    return matches[0].air
