"""stablediffusionapi / ModelsLab: ``/api/v3/…`` with the API ``key`` in the JSON body.

Routes: ``POST /api/v3/load_model`` (a native modelUpload) and
``POST /api/v3/load_model_status`` (``{key, model_id}`` → ``status``
``processing`` / ``success`` / ``error`` with ``load_status`` = the native
upload phase).  Errors: ``{"status": "error", "message"}``.

``POST /api/v3/lora_fine_tune`` (a native training task, see
``lora_fine_tune.py``) and ``POST /api/v3/fine_tune_status/{training_id}``
(or ``fine_tune_status`` with ``training_id`` in the body).
"""

from __future__ import annotations

from typing import Any

from server.dialects.bridge import NativeBridge
from server.dialects.errors import DialectError
from server.dialects.request import DialectRequest, Handler
from server.dialects.sdapi import errors
from server.dialects.sdapi.load_model import LoadModel
from server.dialects.sdapi.lora_fine_tune import LoraFineTune
from server.http import Response, json_response


class SDAPIDialect:
    name = "stablediffusionapi"
    prefix = "/api/"

    def __init__(self, bridge: NativeBridge) -> None:
        self.bridge = bridge
        self.load_model = LoadModel(bridge)
        self.fine_tune = LoraFineTune(bridge)
        self.routes: dict[tuple[str, str], Handler] = {
            ("POST", "/api/v3/load_model"): self.post_load_model,
            ("POST", "/api/v3/load_model_status"): self.post_load_model_status,
            ("POST", "/api/v3/lora_fine_tune"): self.post_lora_fine_tune,
            ("POST", "/api/v3/fine_tune_status"): self.post_fine_tune_status,
        }
        self.param_routes: dict[tuple[str, str], Handler] = {("POST", "/api/v3/fine_tune_status"): self.post_fine_tune_status}

    def render_error(self, error: DialectError) -> Response:
        return errors.render_error(error)

    async def team(self, req: DialectRequest) -> tuple[str, dict[str, Any]]:
        """The team of the body's ``key`` and the body itself."""
        body = req.json_object()
        key = body.get("key")
        return await self.bridge.team(key if isinstance(key, str) else "", req.ctx.peer), body

    async def post_load_model(self, req: DialectRequest) -> Response:
        team, body = await self.team(req)
        return json_response(200, await self.load_model.start(team, body, req.ctx))

    async def post_load_model_status(self, req: DialectRequest) -> Response:
        team, body = await self.team(req)
        return json_response(200, await self.load_model.status(team, body))

    async def post_lora_fine_tune(self, req: DialectRequest) -> Response:
        team, body = await self.team(req)
        return json_response(200, await self.fine_tune.start(team, body, req.ctx))

    async def post_fine_tune_status(self, req: DialectRequest) -> Response:
        team, body = await self.team(req)
        training_id = req.path_arg or body.get("training_id")
        return json_response(200, self.fine_tune.status(team, training_id if isinstance(training_id, str) else None))
