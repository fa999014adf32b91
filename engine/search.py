"""modelSearch: the built-in models (public) and every model a team may see, shaped as the wire's ModelInfo.

Answered from the in-memory :class:`~engine.registry.view.ModelView` on the event loop when it is fresh,
else by SQL in a worker thread (which reloads the view).
"""

from __future__ import annotations

from typing import Any

from engine.models import BUILTIN_MODELS, ModelEntry, architecture_defaults
from engine.pipelines import families
from engine.registry.models import ModelRegistry, ModelRow
from engine.registry.view import ModelView
from protocol.models import UPSCALER_ARCHITECTURE, ModelInfo, ModelSearch, ModelSearchResult
from protocol.upscale import LANCZOS_UPSCALER


def search_models(registry: ModelRegistry, task: ModelSearch, team: str, view: ModelView | None = None) -> ModelSearchResult:
    """Worker thread (one registry query): the matches for ``task`` that ``team`` may see, built-ins first.

    ``view``: reloaded here when stale, so the searches after this one are answered from memory.
    """
    rows = registry.search(team, **_filters(task), limit=10**9, offset=0)[1]
    if view is not None and not view.ready:
        view.reload()
    return _result(task, rows)


def search_in_view(view: ModelView, task: ModelSearch, team: str) -> ModelSearchResult | None:
    """The same answer from the in-memory view, on the event loop; None while the view is stale.

    The matches are remembered per team and filters until the view reloads (:meth:`ModelView.memoised`):
    asked again, a search costs a dict lookup and one result struct.  The remembered ``results`` list is
    shared by the answers that reuse it; nothing downstream changes a result after it is made.
    """
    filters = _filters(task)
    # Keyed by every filter the view and the built-ins' match read (one list of them: _filters), and the page.
    key = (team, task.offset, task.limit, *(tuple(v) if isinstance(v, list) else v for v in filters.values()))

    def compute(v: ModelView) -> tuple[int, list[ModelInfo]] | None:
        rows = v.search(team, **filters)
        return None if rows is None else _matches(task, rows)

    found = view.memoised(key, compute)
    if found is None:
        return None
    total, results = found
    return ModelSearchResult(taskType="modelSearch", taskUUID=task.taskUUID, totalResults=total, results=results)


def _filters(task: ModelSearch) -> dict[str, Any]:
    """A modelSearch's filters, as both the SQL search and the view take them (and the memo key is made of).

    :func:`_builtin_matches` reads the same fields: a filter added here is part of the key at once."""
    return {
        "text": task.search, "category": task.category, "type_": task.type,
        "architectures": (task.architecture,) if task.architecture else None,
        "conditioning": task.conditioning, "visibility": task.visibility, "tags": task.tags,
    }


def _result(task: ModelSearch, rows: list[ModelRow]) -> ModelSearchResult:
    total, results = _matches(task, rows)
    return ModelSearchResult(taskType="modelSearch", taskUUID=task.taskUUID, totalResults=total, results=results)


def _matches(task: ModelSearch, rows: list[ModelRow]) -> tuple[int, list[ModelInfo]]:
    """(totalResults, the page ``offset``/``limit`` asks for): built-ins first, then ``rows`` in their order."""
    builtins = [info for entry, text, info in _BUILTINS if _builtin_matches(entry, text, task)]
    start, end = task.offset, task.offset + task.limit
    page = builtins[start:end]  # only the page's rows are shaped into ModelInfo
    page += [_row_info(r) for r in rows[max(0, start - len(builtins)) : max(0, end - len(builtins))]]
    return len(builtins) + len(rows), page


def _builtin_matches(entry: ModelEntry, text: str, task: ModelSearch) -> bool:
    if task.visibility == "private" or task.tags or task.conditioning:
        return False
    kind = "base" if entry.category == "checkpoint" else None
    if task.category not in (None, entry.category) or task.type not in (None, kind):
        return False
    if task.architecture not in (None, entry.architecture):
        return False
    if task.search and task.search.lower() not in text:
        return False
    return True


def _builtin_info(entry: ModelEntry) -> ModelInfo:
    return ModelInfo(
        air=entry.air, name=entry.name, version="1", category=entry.category, architecture=entry.architecture,
        tags=["builtin"], heroImage="", private=False, comment=entry.comment,
        type="base", defaultSteps=entry.defaults.steps, defaultCFG=entry.defaults.cfg_scale,
        defaultScheduler=entry.defaults.scheduler, defaultStrength=entry.defaults.strength,
    )


def _row_info(row: ModelRow) -> ModelInfo:
    meta = row.meta
    return ModelInfo(
        air=row.air, name=row.name, version=row.version, category=row.category, architecture=row.architecture,
        tags=row.tags, heroImage=meta.get("heroImageURL") or "", private=row.private, comment=_comment(row),
        type=row.type, conditioning=row.conditioning, shortDescription=meta.get("shortDescription"),
        positiveTriggerWords=meta.get("positiveTriggerWords"), negativeTriggerWords=meta.get("negativeTriggerWords"),
        defaultScheduler=meta.get("defaultScheduler"), defaultSteps=meta.get("defaultSteps"),
        defaultCFG=meta.get("defaultCFG"), defaultStrength=meta.get("defaultStrength"),
        defaultWeight=meta.get("defaultWeight"), sizeBytes=row.size_bytes,
    )


def _comment(row: ModelRow) -> str:
    """The upload's ``comment``; an upscaler's starts with the network its file was detected as (``ESRGAN ×4``)."""
    comment = row.meta.get("comment") or ""
    detected = row.meta.get("upscaler")
    if row.category != "upscaler" or not isinstance(detected, dict):
        return comment
    found = f"{detected.get('architecture')} ×{detected.get('scale')} upscaler (detected from the file by spandrel)"
    return f"{found}; {comment}" if comment else found


def _builtin_upscaler() -> tuple[ModelEntry, str, ModelInfo]:
    """The built-in Lanczos upscaler as :data:`_BUILTINS` holds it: entry, lowered search text, info."""
    name = "Lanczos upscaler (built in)"
    entry = ModelEntry(air=LANCZOS_UPSCALER, name=name, category="upscaler", architecture=UPSCALER_ARCHITECTURE,
                       defaults=architecture_defaults(UPSCALER_ARCHITECTURE), builtin=True)
    info = ModelInfo(air=LANCZOS_UPSCALER, name=name, version="1", category="upscaler", architecture=UPSCALER_ARCHITECTURE,
                     tags=["builtin"], heroImage="", private=False, comment="Lanczos resampling, no model: sharper than "
                     "bicubic, invents no detail; any factor from 1 to 4 (default 2)")
    return entry, f"{entry.air} {entry.name} builtin upscaler lanczos".lower(), info


def _builtin_controlnet(air: str, name: str, architecture: str) -> tuple[ModelEntry, ModelInfo]:
    entry = ModelEntry(air=air, name=name, category="controlnet", architecture=architecture,
                       defaults=architecture_defaults(architecture), builtin=True)
    info = ModelInfo(air=air, name=name, version="1", category="controlnet", architecture=architecture, tags=["builtin"],
                     heroImage="", private=False, comment="built offline with random weights from the tiny model's U-Net: "
                     "changes the image with its guide, draws no structure")
    return entry, info


_BUILTINS: list[tuple[ModelEntry, str, ModelInfo]] = [
    (entry, f"{entry.air} {entry.name} builtin".lower(), _builtin_info(entry)) for entry in BUILTIN_MODELS.values()
] + [
    (entry, f"{entry.air} {entry.name} builtin controlnet".lower(), info)
    for entry, info in (_builtin_controlnet(f.builtin_controlnet.air, f.builtin_controlnet.name, f.builtin_controlnet.architecture)
                        for f in families.all() if f.builtin_controlnet is not None)
] + [_builtin_upscaler()]
"""The built-in models with their lowered search text and their (immutable) ModelInfo, made once."""
