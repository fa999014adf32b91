"""stablediffusionapi's ``/api/v3/load_model`` request, as a msgspec type.

Field names and values follow the seed document; ``architecture`` and
``conditioning`` are wisp extensions (the API has no way to say which base a
LoRA/VAE/embedding/controlnet is for, nor a controlnet's conditioning; native
modelUpload needs both).  Every other unknown field is refused by name.
"""

from __future__ import annotations

from typing import Any

import msgspec


class LoadModelRequest(msgspec.Struct, forbid_unknown_fields=True):
    key: str | None = None
    url: str | None = None
    model_id: str | None = None
    model_format: str | None = None
    revision: str | None = None
    model_category: str | None = None
    model_visibility: str | None = None
    model_name: str | None = None
    model_image: str | None = None
    force_load: str | bool | None = None
    hf_upload: str | bool | None = None
    model_subcategory: Any = None
    architecture: str | None = None
    conditioning: str | None = None


class LoadModelStatusRequest(msgspec.Struct, forbid_unknown_fields=True):
    key: str | None = None
    model_id: str | None = None
