"""``GET /openapi.json``: the OpenAPI 3 document of the gateway's endpoints (pgw/openapi.json, the
one description of them; tests/e2e/test_schema.py runs schemathesis against it). Never under
API_PREFIX; the paths it lists are, when that is set."""

import json
import os

from pgw.handlers.base import ApiHandler

PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "openapi.json")


def document(api_prefix=""):
    """The document, with the /v1 paths below ``api_prefix``."""
    with open(PATH, encoding="utf-8") as f:
        doc = json.load(f)
    if api_prefix:
        doc["paths"] = {("/" + api_prefix + p if p.startswith("/v1/") else p): v for p, v in doc["paths"].items()}
    return doc


class OpenApiHandler(ApiHandler):
    _cache = {}

    def get(self):
        prefix = self.gateway.settings.api_prefix
        if prefix not in self._cache:
            self._cache[prefix] = document(prefix)
        self.write_json(self._cache[prefix])
