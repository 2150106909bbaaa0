"""Logging set-up and the one function that keeps keys out of logs."""

import logging
import logging.handlers
import os

log = logging.getLogger("gateway")


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
    handlers = [logging.StreamHandler()]
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
