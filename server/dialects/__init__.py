"""Drop-in REST dialects of other image APIs, each a thin adapter over the native gateway.

A dialect translates one foreign request into a native task, submits it
through :class:`server.gateway.Gateway` exactly as ``POST /v1`` does (so
validation, privacy, limits, conflict checks, the task journal and
getResponse all apply unchanged), and translates the task's record back into
that API's response, polling and webhook shapes.  There is no second engine
and no second registry.

Layout (one job per module):

* :mod:`server.dialects.router` — which path goes to which handler; the only
  thing ``server/app.py`` calls.
* :mod:`server.dialects.request` — what a dialect is (prefix, routes, error
  renderer) and the request its handlers receive.
* :mod:`server.dialects.bridge` — the shared native side: authenticate a key,
  submit a task, read its record, post a webhook.
* :mod:`server.dialects.errors` — one exception every dialect raises and the
  native-code → HTTP-status table; each dialect renders it in its own shape.
* :mod:`server.dialects.decode` — JSON → a dialect's msgspec request type,
  with the failing field as ``parameter``.
* :mod:`server.dialects.names` — a dialect's model name → an AIR visible to
  the team.
* :mod:`server.dialects.novita` — Novita ``/v3/async/txt2img`` and
  ``/v3/async/task-result`` (Bearer key).
* :mod:`server.dialects.sdapi` — stablediffusionapi / ModelsLab ``/api/v3/…``
  (``key`` in the JSON body): ``load_model`` and its status; ``lora_fine_tune``
  plugs in here (see ``sdapi/__init__.py``).
"""

from server.dialects.router import DialectRouter

__all__ = ["DialectRouter"]
