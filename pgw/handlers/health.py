"""``GET /healthz`` (liveness) and ``GET /readyz`` (readiness); never under API_PREFIX.

``/healthz`` answers 200 whenever the process serves requests: restart the container when it
does not. It counts what is open now: the answers the runtime relays and this process's client
connections; ``status`` is ``stopping`` once SIGTERM came (pgw/workers.py). ``/readyz`` also
says whether the upstream answers (``UpstreamHealth``, probed at most every few seconds and
cached): 503 while it does not, or while the process stops, so a load balancer or Docker's
healthcheck sends new work elsewhere.
"""

from pgw.handlers.base import ApiHandler


class HealthHandler(ApiHandler):
    def get(self):
        gw = self.gateway
        connections = getattr(self.application, "open_connections", None)
        self.write_json({"status": "stopping" if gw.stopping else "ok", "open_streams": len(gw.watch),
                         "open_connections": connections() if connections is not None else None})


class ReadyHandler(ApiHandler):
    async def get(self):
        if self.gateway.stopping:
            self.set_status(503)
            return self.write_json({"status": "stopping", "open_streams": len(self.gateway.watch)})
        health = self.gateway.upstream_health
        answers, status, failure = await health.check()
        upstream = {"answers": answers, "status": status, "checked_seconds_ago": round(health.age() or 0.0, 1)}
        if failure:
            upstream["error"] = failure
        elif not answers:
            upstream["error"] = "the upstream answered HTTP %d" % status
        self.set_status(200 if answers else 503)
        self.write_json({"status": "ok" if answers else "unavailable", "upstream": upstream,
                         "open_streams": len(self.gateway.watch)})
