"""Schemathesis over every route of the served OpenAPI document: at least 200 examples per
operation (positive and negative, with the coverage phase's edge values), in-process against the
real handlers, Postgres and the fake Whop. No 5xx, no status, header, content type or body
outside the document.

``make test`` runs it seeded and deterministic (``REBOUND_FUZZ_EXAMPLES``, default 200) so it is
bounded and repeatable; ``make fuzz`` runs it with more examples and a fresh seed each time.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import schemathesis
from schemathesis.config import SchemathesisConfig

from tests.test_api_support import ALPHA, api_fixture  # noqa: F401
from tests.test_openapi import _fuzz_document
from tests.test_openapi import fuzz_env as fuzz_env  # the fixture, re-exported for pytest

EXAMPLES = int(os.environ.get("REBOUND_FUZZ_EXAMPLES", "200"))
SEED = os.environ.get("REBOUND_FUZZ_SEED", "20261201")
assert EXAMPLES >= 200, "the security suite runs at least 200 examples per operation"

CONFIG = SchemathesisConfig.from_dict({
    **({"seed": int(SEED)} if SEED != "random" else {}),
    "suppress-health-check": ["all"],
    "parameters": {"path.company_id": ALPHA},
    "generation": {"mode": "all", "max-examples": EXAMPLES, "deterministic": SEED != "random",
                   "database": "none", "no-shrink": True},
    "phases": {"coverage": {"enabled": True}, "stateful": {"enabled": False}},
    "checks": {"enabled": False, "not_a_server_error": {"enabled": True},
               "status_code_conformance": {"enabled": True}, "content_type_conformance": {"enabled": True},
               "response_schema_conformance": {"enabled": True},
               "response_headers_conformance": {"enabled": True}},
})
schema = schemathesis.openapi.from_dict(_fuzz_document(), config=CONFIG)


@schema.parametrize()
@pytest.mark.usefixtures("fuzz_env")
def test_every_route_survives_fuzzing(case: Any, request: pytest.FixtureRequest) -> None:
    wsgi, token = request.getfixturevalue("fuzz_env")
    case.call_and_validate(app=wsgi, headers={"x-whop-user-token": token})
