"""``GET /healthz`` (liveness) and ``GET /readyz`` (readiness); never under API_PREFIX.

``/healthz`` answers 200 whenever the process serves requests: restart the container when it
does not. ``/readyz`` also says whether the upstream answers (``UpstreamHealth``, probed at most
every few seconds and cached): 503 while it does not, so a load balancer or Docker's
healthcheck sees a gateway that cannot answer anything.
"""

from pgw.handlers.base import ApiHandler


class HealthHandler(ApiHandler):
    def get(self):
        self.write_json({"status": "ok", "open_streams": len(self.gateway.watch)})


class ReadyHandler(ApiHandler):
    async def get(self):
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
