"""``GET /metrics``: the Prometheus text format (``pgw.metrics``); never under API_PREFIX.

On by default (METRICS_ENABLED); with METRICS_KEY set it wants ``Authorization: Bearer
<METRICS_KEY>`` (Prometheus' ``authorization`` scrape setting), else 401. The numbers say how
much traffic each model gets, not who sent it: no key or account appears in them.
"""

import hmac

from pgw.errors import ApiError
from pgw.handlers.base import ApiHandler
from pgw.metrics import CONTENT_TYPE_LATEST


class MetricsHandler(ApiHandler):
    def get(self):
        gw = self.gateway
        if gw.metrics is None:
            raise ApiError(404, "metrics are turned off (METRICS_ENABLED=false)", "invalid_request_error", "not_found")
        wanted = gw.settings.metrics_key
        if wanted:
            scheme, _, given = self.request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), wanted.encode()):
                raise ApiError(401, "/metrics wants 'Authorization: Bearer <METRICS_KEY>'", "invalid_request_error",
                               "invalid_api_key")
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.set_header("Cache-Control", "no-store")
        self.finish(gw.metrics.render())
