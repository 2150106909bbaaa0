"""The OpenAPI document (pgw/openapi.json, served at GET /openapi.json) against the live server:
schemathesis generates requests for every operation, valid and not (a bounded number), and
checks that none gets a 5xx, every error is an OpenAI error object and every success matches
its schema. Loopback only: the gateway talks to the fake upstream."""

import json
import os

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from devkit.procs import ROOT
from tests.helpers import http

schema = schemathesis.openapi.from_path(os.path.join(ROOT, "pgw", "openapi.json"))


def test_the_document_is_served_and_is_the_file(gateway):
    status, headers, body = http("GET", gateway.url + "/openapi.json")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    with open(os.path.join(ROOT, "pgw", "openapi.json"), encoding="utf-8") as f:
        assert json.loads(body) == json.load(f)


def test_api_prefix_moves_the_v1_paths(gateway_factory):
    gw = gateway_factory(API_PREFIX="secret-prefix")
    paths = json.loads(http("GET", gw.url + "/openapi.json")[2])["paths"]
    assert "/secret-prefix/v1/chat/completions" in paths and "/healthz" in paths


@pytest.fixture(scope="module")
def schema_gateway(gateway_factory):
    # Quick answers: the fake upstream's default scenario, no pause between events.
    return gateway_factory(KEEPALIVE_INTERVAL="0", ADMIN_KEY="fk-schemathesis-key")


# The document gives shapes. A request of the right shape may still be refused (a model that does
# not exist, a URL that cannot be fetched: a 4xx error object), and fields beyond the shapes are
# ignored as OpenAI's API ignores them: the two checks that judge exactly that are left out. So is
# ignored_auth: whether a key is valid is the upstream's to say, and the fake upstream takes any
# (a missing key is the gateway's 401, tested in test_limits_secrets.py and test_e2e_chat.py). All
# the others run: no 5xx, status codes and content types as documented, bodies matching their
# schemas (every error an OpenAI error object), 405s with Allow.
LEFT_OUT = [schemathesis.specs.openapi.checks.positive_data_acceptance,
            schemathesis.specs.openapi.checks.negative_data_rejection,
            schemathesis.specs.openapi.checks.ignored_auth]


@schema.parametrize()
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_conforms(case, schema_gateway):
    case.call_and_validate(base_url=schema_gateway.url, headers={"Authorization": "Bearer fk-schemathesis-key"},
                           excluded_checks=LEFT_OUT, timeout=20)
