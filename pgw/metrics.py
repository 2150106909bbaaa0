"""Prometheus metrics: the one place that knows their names, labels and buckets.

Counted once per request or per stream, never per event: a request's counters and histograms
are updated when it finishes (``ApiHandler.on_finish``), open streams and keep-alives once per
``StreamWatch`` sweep. With PROCESS_WORKERS > 1 the workers share a directory of memory-mapped
files (prometheus_client's multiprocess mode, PROMETHEUS_MULTIPROC_DIR): ``prepare_multiprocess``
runs in the main process before forking, and ``/metrics`` in any worker adds up all of them.
"""

import glob
import os
import re
import shutil
import tempfile

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics,
                               generate_latest, values)
from prometheus_client import CONTENT_TYPE_LATEST  # noqa: F401  (re-exported for the handler)
from prometheus_client.multiprocess import MultiProcessCollector

ENV = "PROMETHEUS_MULTIPROC_DIR"

# The ``*_created`` series (when each labelled series began) double the output and say nothing
# an operator asks; process start is in process_start_time_seconds.
disable_created_metrics()

# Handler class -> the ``endpoint`` label: a fixed set, whatever paths clients try.
ENDPOINTS = {
    "ChatCompletionsHandler": "/v1/chat/completions",
    "ImageGenerationsHandler": "/v1/images/generations",
    "ModelsHandler": "/v1/models",
    "ModelHandler": "/v1/models/{name}",
    "SavedFileHandler": "/images/{file}",
    "HealthHandler": "/healthz",
    "ReadyHandler": "/readyz",
    "MetricsHandler": "/metrics",
}

# Time to first byte: a non-stream answer's first byte is its last; a stream's is the role chunk.
TTFB_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
# Whole requests: streams of long answers (and code-interpreter runs) last minutes.
DURATION_BUCKETS = (0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600)


def prepare_multiprocess(directory=None):
    """In the main process, before forking workers: an empty metrics directory, and
    prometheus_client switched to its multiprocess values. ``directory``: the operator's
    PROMETHEUS_MULTIPROC_DIR if set (its old files are removed: counters start at zero with
    the server), else a fresh temporary directory. Returns the directory."""
    if directory:
        os.makedirs(directory, exist_ok=True)
        for path in glob.glob(os.path.join(directory, "*.db")):
            os.unlink(path)
    else:
        _remove_stale_directories()
        directory = tempfile.mkdtemp(prefix="pgw-metrics-%d-" % os.getpid())
    os.environ[ENV] = directory
    values.ValueClass = values.get_value_class()  # prometheus_client read the environment at import
    return directory


def _remove_stale_directories():
    """Remove the metrics directories of gateways that are gone (a stopped main process cannot
    clean up after itself: its workers end with it)."""
    for path in glob.glob(os.path.join(tempfile.gettempdir(), "pgw-metrics-*-*")):
        m = re.match(r"pgw-metrics-(\d+)-", os.path.basename(path))
        if m and not _alive(int(m.group(1))):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


_LIVE_FILE = re.compile(r"gauge_live\w*_(\d+)\.db\Z")


def _forget_dead_workers(directory):
    """Drop the live-gauge files of workers that are gone (Tornado restarts a worker that
    died): their open streams closed with them. Counters of dead workers are kept."""
    for path in glob.glob(os.path.join(directory, "gauge_live*_*.db")):
        m = _LIVE_FILE.search(os.path.basename(path))
        if m and not _alive(int(m.group(1))):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


class Metrics:
    """The gateway's metrics for one process (built after forking, like the other services)."""

    def __init__(self):
        self.directory = os.environ.get(ENV) if values.ValueClass is not values.MutexValue else None
        self._model_names = None
        # Multiprocess values are written to files and collected from them; a lone process
        # registers its metrics in a registry of its own (so tests can build several).
        self.registry = None if self.directory else CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.requests = Counter("pgw_requests_total", "Requests answered, by endpoint, HTTP status and model",
                                ["endpoint", "status", "model"], registry=reg)
        self.ttfb = Histogram("pgw_time_to_first_byte_seconds", "Seconds from the request to the first byte "
                              "of the answer", ["endpoint"], buckets=TTFB_BUCKETS, registry=reg)
        self.duration = Histogram("pgw_request_duration_seconds", "Seconds from the request to the last byte",
                                  ["endpoint"], buckets=DURATION_BUCKETS, registry=reg)
        self.open_streams = Gauge("pgw_open_streams", "Answers being relayed from the upstream now",
                                  registry=reg, multiprocess_mode="livesum")
        self.upstream_errors = Counter("pgw_upstream_errors_total", "Upstream conversations that did not answer "
                                       "200, by upstream status (no_answer: refused, timed out or cut before "
                                       "an answer)", ["status"], registry=reg)
        self.keepalives = Counter("pgw_keepalives_total", "Keep-alive comments sent on quiet streams", registry=reg)
        self.saved_bytes = Counter("pgw_saved_file_bytes_total", "Bytes of images and files saved from answers",
                                   registry=reg)
        self.saved_files = Counter("pgw_saved_files_total", "Images and files saved from answers", registry=reg)

    def model_label(self, name, models):
        """``name`` if it is one of the model table's own names (GPTs included), ``other`` for
        anything else a client sent (pass-through slugs, typos: a client must not be able to
        grow the number of series), empty when the request named none."""
        if name is None:
            return ""
        if self._model_names is None:
            self._model_names = frozenset(route.name for route in models.routes())  # fixed after start-up
        return name if name in self._model_names else "other"

    def request_done(self, endpoint, status, model, ttfb, duration, upstream_status, saved):
        """One finished request. ``upstream_status``: the conversation's upstream HTTP status,
        "no_answer", or None (no conversation); ``saved``: sizes of the files it saved."""
        self.requests.labels(endpoint, str(status), model).inc()
        if ttfb is not None:
            self.ttfb.labels(endpoint).observe(ttfb)
        self.duration.labels(endpoint).observe(duration)
        if upstream_status is not None and upstream_status != 200:
            self.upstream_errors.labels(str(upstream_status)).inc()
        if saved:
            self.saved_files.inc(len(saved))
            self.saved_bytes.inc(sum(saved))

    def swept(self, open_streams, keepalives):
        """What one StreamWatch sweep saw: streams open now, keep-alives it sent."""
        self.open_streams.set(open_streams)
        if keepalives:
            self.keepalives.inc(keepalives)

    def render(self):
        """The text exposition of every process's metrics."""
        if self.directory is None:
            return generate_latest(self.registry)
        _forget_dead_workers(self.directory)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.directory)
        return generate_latest(registry)
