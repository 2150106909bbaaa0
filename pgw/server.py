"""Start the gateway: read settings, build the application, fork workers, listen.

    python server.py [--config PATH] [--demo]

``--demo`` also starts the bundled demo upstream (fakeupstream/) on a loopback port and points
BASE_URL at it, so every endpoint can be tried without an account.
"""

import argparse
import gc
import logging
import resource
import sys

import tornado.httpserver
import tornado.ioloop
import tornado.netutil
import tornado.process
import tornado.web

from pgw.conf import gpts
from pgw import logs
from pgw.balance import BalancedHTTPServer, ConnectionCounts
from pgw.conf import settings as conf_settings
from pgw.gateway import Gateway
from pgw.handlers.base import NotFoundHandler
from pgw.handlers.chat import ChatCompletionsHandler
from pgw.handlers.health import HealthHandler
from pgw.handlers.images import ImageGenerationsHandler, SavedFileHandler
from pgw.handlers.models import ModelHandler, ModelsHandler
from pgw.workers import stop_on_signals, supervise

log = logging.getLogger("gateway")

# Connections waiting to be accepted while the loop is busy; Tornado's default of 128 drops
# SYNs (a 1 s client retry) when a thousand bots connect at once. The kernel caps it at somaxconn.
LISTEN_BACKLOG = 4096


def raise_fd_limit():
    """Each stream holds two descriptors (client, upstream): lift the soft limit to the hard one.

    Returns the soft limit in force afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass  # some systems refuse an unlimited soft limit: keep what we have
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def tune_gc():
    """Make the cyclic garbage collector cheap with thousands of open streams.

    Every open stream keeps a few hundred objects alive, and Python's default young-generation
    threshold (700 allocations) runs collections so often that, with thousands of streams, they
    take a quarter of the server's CPU (bench: 4,000 streams connecting within a second,
    server CPU 4.2 -> 3.1 s, TTFB p99 2.9 -> 1.6 s). Collections run 14x less often, and what
    start-up loaded (modules, settings, the model table) is frozen out of every collection.
    Memory per open stream is unchanged (bench S3).
    """
    gc.freeze()
    gc.set_threshold(10000, 10, 10)


def routes(settings):
    prefix = "/" + settings.api_prefix if settings.api_prefix else ""
    return [
        (prefix + r"/v1/chat/completions", ChatCompletionsHandler),
        (prefix + r"/v1/models", ModelsHandler),
        (prefix + r"/v1/models/([^/]+)", ModelHandler),
        (prefix + r"/v1/images/generations", ImageGenerationsHandler),
        (r"/images/(.*)", SavedFileHandler),
        (r"/healthz", HealthHandler),
    ]


def make_app(gateway):
    app = tornado.web.Application(routes(gateway.settings), default_handler_class=NotFoundHandler,
                                  compress_response=False)
    app.gateway = gateway
    return app


def parse_args(argv):
    p = argparse.ArgumentParser(description="OpenAI-compatible gateway for a PandoraNext-style backend-api")
    p.add_argument("--config", help="settings file (JSON); environment variables override it")
    p.add_argument("--demo", action="store_true", help="also run the bundled demo upstream and use it")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        settings = conf_settings.load(args.config)
    except conf_settings.SettingsError as e:
        print("settings: %s" % e, file=sys.stderr)
        return 2
    logs.setup(settings.log_level, settings.need_log_to_file)

    if args.demo:
        from fakeupstream.app import start_demo_upstream
        demo_url = start_demo_upstream()
        settings = settings.replace(base_url=demo_url, proxy_api_prefix="", process_workers=1)
        log.info("demo upstream listening on %s (answers like PandoraNext, no account needed)", demo_url)
    elif not settings.base_url:
        print("BASE_URL is not set: point it at your PandoraNext proxy (e.g. BASE_URL=http://127.0.0.1:8181), "
              "or run ./run.sh --demo to try the gateway against the bundled demo upstream.", file=sys.stderr)
        return 2

    for line in settings.summary():
        log.info("setting %s", line)
    try:
        models = gpts.build_models(settings)  # before forking: a bad GPTs file stops start-up once
    except conf_settings.SettingsError as e:
        print("settings: %s" % e, file=sys.stderr)
        return 2
    raise_fd_limit()
    sockets = tornado.netutil.bind_sockets(settings.port, settings.host, backlog=LISTEN_BACKLOG)
    port = sockets[0].getsockname()[1]
    counts = None
    worker = None
    if settings.process_workers > 1:
        counts = ConnectionCounts(settings.process_workers)  # before forking: shared memory
        # Forks the workers and keeps them running (pgw/workers.py); returns in each worker.
        worker = supervise(settings.process_workers, sockets, settings.shutdown_grace)
        if worker is None:
            return 0  # the parent, once every worker has stopped

    try:
        gateway = Gateway(settings, models)
    except conf_settings.SettingsError as e:
        print("settings: %s" % e, file=sys.stderr)
        return 2
    # A lone worker keeps Tornado's server; several balance their connections (balance.py).
    server_class = BalancedHTTPServer if counts is not None else tornado.httpserver.HTTPServer
    server = server_class(
        make_app(gateway), max_body_size=max(settings.max_request_body * 4, 64 << 20), xheaders=True)
    if counts is not None:
        server.balance(counts, worker)
    server.add_sockets(sockets)
    gateway.start()
    server_app = server.request_callback
    server_app.open_connections = lambda: len(server._connections)  # for /healthz (Tornado's TCPServer)
    stop_on_signals(server, gateway)
    log.info("listening on http://%s:%d (pid %d)", settings.host, port, worker or 0)
    tune_gc()
    tornado.ioloop.IOLoop.current().start()
    return 0


if __name__ == "__main__":
    sys.exit(main())
