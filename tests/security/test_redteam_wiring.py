"""The last connections of issue 18's fixes: the REST dialects refuse lone surrogates like the socket
does, and the CLI refuses the reserved source without a traceback."""

from __future__ import annotations

import pytest

from server.dialects.errors import DialectError
from server.dialects.request import DialectRequest
from server.gateway import RequestContext
from tests.conftest import wisp_cli


def test_a_dialect_body_with_a_lone_surrogate_is_an_invalid_parameter():
    request = DialectRequest("POST", "/v3/async/txt2img", {}, {}, b'{"request": {"prompt": "a \\ud800 cat"}}',
                             RequestContext(base_url="http://x", own_hosts=frozenset()))
    with pytest.raises(DialectError) as refused:
        request.json_object()
    assert refused.value.code == "invalidParameter" and refused.value.parameter == "request.prompt"
    assert refused.value.status == 400


def test_teams_set_default_source_wisp_is_refused_in_one_line(tmp_path):
    out = wisp_cli("teams", "set", "default", "--default-source", "wisp", "--data-dir", str(tmp_path))
    assert out.returncode == 1
    assert "reserved" in out.stderr and "Traceback" not in out.stderr
