"""``GET /healthz``: 200 once the process serves requests (never under API_PREFIX); 503 while
it stops (SIGTERM), so a load balancer sends new work elsewhere. Counts what is open now: the
answers the runtime relays and this process's client connections."""

from pgw.handlers.base import ApiHandler


class HealthHandler(ApiHandler):
    def get(self):
        gw = self.gateway
        connections = getattr(self.application, "open_connections", None)
        if gw.stopping:
            self.set_status(503)
        self.write_json({"status": "stopping" if gw.stopping else "ok", "open_streams": len(gw.watch),
                         "open_connections": connections() if connections is not None else None})
