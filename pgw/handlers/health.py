"""``GET /healthz``: 200 once the process serves requests (never under API_PREFIX)."""

from pgw.handlers.base import ApiHandler


class HealthHandler(ApiHandler):
    def get(self):
        self.write_json({"status": "ok", "open_streams": len(self.gateway.watch)})
