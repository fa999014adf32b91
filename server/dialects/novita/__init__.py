"""Novita's async image API: ``POST /v3/async/txt2img`` and ``GET /v3/async/task-result``.

Authenticated with ``Authorization: Bearer <wisp API key>`` (the same keys and
teams as the native protocol).  The ``task_id`` Novita answers is the native
taskUUID, so the same task can be polled with getResponse/getTaskDetails.
An optional ``extra.webhook.url`` receives ``{"event_type":
"ASYNC_TASK_RESULT", "payload": <task-result body>}`` when the task ends.
"""

from __future__ import annotations

from server.dialects.bridge import NativeBridge
from server.dialects.errors import DialectError
from server.dialects.names import resolve_model
from server.dialects.novita import errors, result, translate
from server.dialects.request import DialectRequest, Handler
from server.http import Response, json_response


class NovitaDialect:
    name = "Novita"
    prefix = "/v3/"

    def __init__(self, bridge: NativeBridge) -> None:
        self.bridge = bridge
        self.routes: dict[tuple[str, str], Handler] = {
            ("POST", "/v3/async/txt2img"): self.txt2img,
            ("GET", "/v3/async/task-result"): self.task_result,
        }

    def render_error(self, error: DialectError) -> Response:
        return errors.render_error(error)

    async def txt2img(self, req: DialectRequest) -> Response:
        team = await self.bridge.team(req.bearer(), req.ctx.peer)
        request, extra = translate.parse(req.json_object())
        model = await resolve_model(self.bridge, team, request.model_name, ("checkpoint",), "model_name")
        loras = [
            await resolve_model(self.bridge, team, lora.model_name, ("lora", "lycoris"), f"loras[{index}].model_name")
            for index, lora in enumerate(request.loras or [])
        ]
        task = translate.to_native(request, extra, model, loras)
        submitted = await self.bridge.submit(team, task, req.ctx, rename=translate.novita_name)
        if extra.webhook is not None:
            url, task_uuid = extra.webhook.url, submitted.task_uuid
            self.bridge.on_finished(submitted, lambda: self._notify(url, team, task_uuid))
        return json_response(200, {"task_id": submitted.task_uuid})

    def _notify(self, url: str, team: str, task_uuid: str) -> None:
        record = self.bridge.record(team, task_uuid)
        if record is not None:
            self.bridge.post_webhook(url, {"event_type": "ASYNC_TASK_RESULT", "payload": result.task_result(record, self.bridge.task_retention_s)})

    async def task_result(self, req: DialectRequest) -> Response:
        team = await self.bridge.team(req.bearer(), req.ctx.peer)
        task_id = req.query.get("task_id", "").strip()
        if not task_id:
            raise DialectError("missingParameter", "task_id is required", parameter="task_id")
        record = self.bridge.record(team, task_id)
        if record is None:
            raise DialectError("taskNotFound", "no task with this task_id is known for your key (it may have expired)", parameter="task_id")
        return json_response(200, result.task_result(record, self.bridge.task_retention_s))
