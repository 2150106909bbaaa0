"""Logging set-up, the access log line, and the one function that keeps keys out of logs."""

import logging
import logging.handlers
import os

log = logging.getLogger("gateway")
access_log = logging.getLogger("gateway.access")

# Probes (Docker's healthcheck, Prometheus) every few seconds would drown the requests: DEBUG.
QUIET_HANDLERS = frozenset({"HealthHandler", "ReadyHandler", "MetricsHandler"})


def mask(secret):
    """Show enough of a key to tell two apart, never enough to use it: ``fk-a…9xQz``."""
    if not secret:
        return ""
    secret = str(secret)
    if "," in secret:  # a Team account's "<token>,<account id>": each part masked on its own
        return ",".join(mask(part.strip()) for part in secret.split(","))
    if len(secret) <= 12:
        return "*" * len(secret)
    return "%s…%s" % (secret[:4], secret[-4:])


def setup(level, to_file, directory="log"):
    """Console logging, plus daily rotated files under ``log/`` when asked for."""
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if to_file:
        os.makedirs(directory, exist_ok=True)
        handlers.append(logging.handlers.TimedRotatingFileHandler(
            os.path.join(directory, "gateway.log"), when="midnight", backupCount=14, encoding="utf-8"))
    fmt = logging.Formatter("%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s")
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        h.setFormatter(fmt)
        root.addHandler(h)
    root.setLevel(level)
    # Tornado's access log line per request is noise at INFO with thousands of streams.
    logging.getLogger("tornado.access").setLevel(max(logging.getLevelName(level), logging.WARNING))
    # At DEBUG, Tornado turns on curl's verbose output, which logs every request header, the
    # client's Authorization among them: never, whatever LOG_LEVEL says.
    logging.getLogger("tornado.curl_httpclient").setLevel(max(logging.getLevelName(level), logging.INFO))


def _seconds(value):
    return "-" if value is None else "%.3f" % value


def access(quiet, method, path, status, model=None, stream=None, ttfb=None, total=None, bytes=0, key=None,
           account=None, queued=None, upstream=None, client_gone=False):
    """One line per request at INFO (probes at DEBUG), fields as ``name=value``, ``-`` when unknown:

    ``POST /v1/chat/completions 200 model=gpt-4-s stream=true ttfb=0.012 total=1.840 bytes=5321
    key=fk-a…9xQz upstream=200`` (+ ``account=… queued=…`` with an account pool, ``client_gone``).
    ``key`` is already masked; the path is cut at 200 characters, unprintable ones escaped.
    """
    level = logging.DEBUG if quiet else logging.INFO
    if not access_log.isEnabledFor(level):
        return
    parts = ["%s %s %d" % (method, path[:200].encode("unicode_escape").decode("ascii"), status),
             "model=%s" % ("-" if not model else model.encode("unicode_escape").decode("ascii").replace(" ", "_")),
             "stream=%s" % ("-" if stream is None else "true" if stream else "false"),
             "ttfb=%s" % _seconds(ttfb), "total=%s" % _seconds(total), "bytes=%d" % bytes,
             "key=%s" % (key or "-")]
    if account is not None:
        parts.append("account=%s" % account)
    if queued is not None:
        parts.append("queued=%s" % _seconds(queued))
    parts.append("upstream=%s" % ("-" if upstream is None else upstream))
    if client_gone:
        parts.append("client_gone")
    access_log.log(level, " ".join(parts))
