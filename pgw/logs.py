"""Logging set-up, the access log line, and the one place that keeps keys out of logs.

``mask`` is for code that names a key on purpose. ``KeyRedactor``, a filter on every handler
``setup`` installs, is the net under everything else: a key the upstream echoes in an error
detail, a key in a query string, an exception message quoting a header. It masks every key
this process has seen (``remember``, called for each request's Authorization) and every word
shaped like one (``fk-``/``sk-``/``pk-`` keys, JWT access tokens), in the message, its
arguments and any traceback, at every level.
"""

import collections
import logging
import logging.handlers
import os
import re

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


# Shapes of keys and tokens whoever sent them: PandoraNext fk-/pk- share tokens, OpenAI-style
# sk- keys, JWT access tokens (eyJ...), refresh tokens.
_SHAPED = re.compile(r"\b(?:fk|sk|pk|rt)-[A-Za-z0-9_\-]{8,}|\beyJ[A-Za-z0-9_\-]{10,}(?:\.[A-Za-z0-9_\-]*){0,2}")
_SEEN: "collections.OrderedDict[str, bool]" = collections.OrderedDict()
SEEN_LIMIT = 4096   # keys remembered per process; older ones are still caught by their shape
# Runs of the characters keys are made of: a log line is split into these and each is looked up
# (one pass over the line, whatever the number of keys: searching the line for each of 4,096
# keys cost ~0.4 ms per access line). Keys with other characters are searched for one by one.
_WORD = re.compile(r"[A-Za-z0-9_\-.~]{8,}")
_WORDY = re.compile(r"\A[A-Za-z0-9_\-.~]+\Z")
_ODD: "collections.OrderedDict[str, bool]" = collections.OrderedDict()


def _keep(table, part):
    table[part] = True
    table.move_to_end(part)
    while len(table) > SEEN_LIMIT:
        table.popitem(last=False)


def remember(secret):
    """Mask ``secret`` (and each part of a ``token,account`` key) in every later log line."""
    if not secret:
        return
    if secret in _SEEN:  # a key seen before (every request of a pool account): kept fresh, no more
        _SEEN.move_to_end(secret)
        return
    parts = secret.split(",")
    for part in parts + [secret] if len(parts) > 1 else parts:
        part = part.strip()
        if len(part) >= 8:
            _keep(_SEEN if _WORDY.match(part) else _ODD, part)


def _masked_word(m):
    word = m.group(0)
    if word in _SEEN:
        return mask(word)
    core = word.strip("._-~")
    if core != word and core in _SEEN:
        return word.replace(core, mask(core))
    return word


def redact(text):
    """``text`` with every remembered or key-shaped word masked."""
    if not text:
        return text
    for part in sorted((k for k in _ODD if k in text), key=len, reverse=True):
        text = text.replace(part, mask(part))
    if _SEEN:
        text = _WORD.sub(_masked_word, text)
    return _SHAPED.sub(lambda m: mask(m.group(0)), text)


class KeyRedactor(logging.Filter):
    """Rewrites each record with its keys masked (see the module docstring)."""

    def filter(self, record):
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


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
        h.addFilter(KeyRedactor())
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
