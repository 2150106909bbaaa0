"""Start the gateway: read settings, build the application, fork workers, listen.

    python server.py [--config PATH] [--demo]

``--demo`` also starts the bundled demo upstream (fakeupstream/) on a loopback port and points
BASE_URL at it, so every endpoint can be tried without an account.
"""

import argparse
import errno
import gc
import ipaddress
import logging
import os
import re
import resource
import signal
import socket
import sys
import tempfile

import tornado.ioloop
import tornado.netutil
import tornado.process
import tornado.web

from pgw.conf import gpts
from pgw import logs
from pgw import pool as account_pool
from pgw import metrics as pgw_metrics
from pgw.balance import BalancedHTTPServer, ConnectionCounts
from pgw.conf import settings as conf_settings
from pgw.gateway import Gateway
from pgw.handlers.admin import AccountsHandler, ReloadHandler
from pgw.listener import GatewayHTTPServer
from pgw.handlers.base import NotFoundHandler
from pgw.handlers.chat import ChatCompletionsHandler
from pgw.handlers.health import HealthHandler, ReadyHandler
from pgw.handlers.metrics import MetricsHandler
from pgw.handlers.images import ImageGenerationsHandler, SavedFileHandler
from pgw.handlers.models import ModelHandler, ModelsHandler
from pgw.handlers.openapi import OpenApiHandler
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

    The oldest generation is never collected automatically: a full collection traverses every
    object of every open stream (500 queued requests: 3-10 ms; thousands of streams: more), and
    requests leave no garbage cycles (tests/e2e/test_no_garbage.py), so what such a pause would
    free is next to nothing. ``pgw.runtime.StreamWatch`` collects in full instead, when the
    process is idle and at least every FULL_COLLECT_EVERY seconds.
    """
    gc.freeze()
    gc.set_threshold(10000, 10, NEVER)


# A threshold the oldest generation's counter (one per middle-generation collection, one of those
# per 100,000 net allocations) does not reach in a process's life.
NEVER = 1 << 30


def _api(prefix, *parts):
    """The route pattern of an API path: any run of slashes where one belongs, and a trailing
    one, so a base URL typed with a trailing slash (``…/v1/`` + ``/chat/completions``) works.
    ``parts``: literal path segments, or a regex group (starting with ``(``) for one segment."""
    segments = [re.escape(p) for p in prefix.split("/") if p]
    for part in parts:
        segments += [part] if part.startswith("(") else [re.escape(p) for p in part.split("/") if p]
    return "".join("/+" + segment for segment in segments) + "/*"


def use_event_loop(name):
    """Make the loop Tornado runs on: ``asyncio`` (the standard library's) or ``uvloop`` (libuv,
    its callbacks, futures and socket calls in C). Called before the first IOLoop is made."""
    if name == "uvloop":
        import asyncio
        try:
            import uvloop
        except ImportError:
            raise StartupError("EVENT_LOOP=uvloop but uvloop is not installed: pip install uvloop==0.23.0, "
                               "or set EVENT_LOOP=asyncio") from None
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def routes(settings):
    prefix = settings.api_prefix
    return [
        (_api(prefix, "v1/chat/completions"), ChatCompletionsHandler),
        (_api(prefix, "v1/models"), ModelsHandler),
        (_api(prefix, "v1/models", "([^/]+)"), ModelHandler),
        (_api(prefix, "v1/images/generations"), ImageGenerationsHandler),
        (r"/images/(.*)", SavedFileHandler),
        (r"/healthz", HealthHandler),
        (r"/admin/accounts", AccountsHandler),
        (r"/admin/accounts/reload", ReloadHandler),
        (r"/readyz", ReadyHandler),
        (r"/metrics", MetricsHandler),
        (r"/openapi.json", OpenApiHandler),
    ]


def _no_tornado_access_line(handler):
    """Tornado's own access line is replaced by the gateway's (``ApiHandler.log_request``)."""


def make_app(gateway):
    """The Application. X-Forwarded-* headers count only from TRUSTED_PROXIES: the listener
    applies them (pgw/listener.py) and ``ApiHandler.public_host`` reads X-Forwarded-Host."""
    app = tornado.web.Application(routes(gateway.settings), default_handler_class=NotFoundHandler,
                                  compress_response=False, log_function=_no_tornado_access_line)
    app.gateway = gateway
    return app


def pool_start_problem(settings):
    """Why the account pool cannot start with these settings (one line), or None."""
    try:
        accounts, _keys = account_pool.load_accounts(settings)
    except account_pool.AccountsError as e:
        return str(e)
    if accounts and settings.process_workers > 1 and not settings.redis_url:
        return ("PROCESS_WORKERS=%d with an account pool needs REDIS_URL (one limit per account across processes); "
                "set REDIS_URL=redis://127.0.0.1:6379/0 or PROCESS_WORKERS=1" % settings.process_workers)
    return None


def reload_on_sighup(gateway):
    """SIGHUP re-reads the accounts file; answers in flight keep their accounts."""
    loop = tornado.ioloop.IOLoop.current()

    async def reload():
        try:
            await gateway.reload_accounts()
        except account_pool.AccountsError as e:
            log.error("SIGHUP: the accounts were not reloaded: %s", e)

    signal.signal(signal.SIGHUP, lambda *_: loop.add_callback_from_signal(reload))
class StartupError(Exception):
    """Start-up cannot go on; the message is the one line the operator reads."""


def listen_sockets(settings):
    """Bind the listening sockets, or a ``StartupError`` naming the port and the setting."""
    try:
        return tornado.netutil.bind_sockets(settings.port, settings.host, backlog=LISTEN_BACKLOG)
    except OSError as e:
        where = "%s:%d" % (settings.host, settings.port)
        if e.errno == errno.EADDRINUSE:
            raise StartupError("cannot listen on %s: port %d is already in use (is another gateway running?); "
                               "stop it or set PORT to a free port" % (where, settings.port)) from None
        if e.errno == errno.EACCES:
            raise StartupError("cannot listen on %s: not allowed to use port %d (ports below 1024 need root); "
                               "set PORT to 1024 or above" % (where, settings.port)) from None
        if e.errno == errno.EADDRNOTAVAIL:
            raise StartupError("cannot listen on %s: %s is not an address of this machine; set HOST "
                               "(0.0.0.0 for every address)" % (where, settings.host)) from None
        if isinstance(e, socket.gaierror):
            raise StartupError("cannot listen on %s: HOST %r is not an address or a known host name (%s)"
                               % (where, settings.host, e.strerror or e)) from None
        raise StartupError("cannot listen on %s (HOST, PORT): %s" % (where, e.strerror or e)) from None


def check_writable(directory, setting):
    """Make ``directory`` if needed and write a file in it, or a ``StartupError`` naming ``setting``:
    found now, not at the first image a client waits for."""
    try:
        os.makedirs(directory, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise StartupError("%s %s cannot be written: %s (user %s); fix its permissions or point %s elsewhere"
                           % (setting, directory, e.strerror or e, _user(), setting)) from None


def _user():
    try:
        import pwd
        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        return str(os.getuid())


def _is_loopback(host):
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def startup_warnings(settings):
    """What will bite later, one line each (the start-up log shows them as warnings)."""
    warnings = []
    if not settings.upload_base_url and (settings.bot_mode or not _is_loopback(settings.host)):
        warnings.append(
            "UPLOAD_BASE_URL is empty: links to saved images use the address each request came to, which a bot "
            "on this host or a container calls with an address its users cannot open; set UPLOAD_BASE_URL to the "
            "gateway's public address, e.g. http://<public IP>:%d" % settings.port)
    if settings.images_max_age_hours == 0 and settings.images_max_total_mb == 0:
        warnings.append("IMAGES_MAX_AGE_HOURS=0 and IMAGES_MAX_TOTAL_MB=0: saved images and files in %s are kept "
                        "for ever and the directory only grows; set IMAGES_MAX_AGE_HOURS (e.g. 168 for a week) or "
                        "IMAGES_MAX_TOTAL_MB to have them deleted" % settings.images_dir)
    return warnings


async def probe_base_url(gateway):
    """Start-up's check that BASE_URL answers, in the background: the server listens meanwhile."""
    answers, status, failure = await gateway.upstream_health.check()
    if not answers:
        settings = gateway.settings
        why = failure or "HTTP %s" % status
        log.warning("BASE_URL %s does not answer (%s): every request will fail until it does; check BASE_URL "
                    "and PROXY_API_PREFIX (GET /readyz tells when it answers)", settings.base_url, why)


def setup_metrics(settings):
    """Before forking: with several workers, or PROMETHEUS_MULTIPROC_DIR set, the metrics go to
    shared files in a directory emptied now (pgw.metrics). Returns the directory or None."""
    given = os.environ.get(pgw_metrics.ENV)
    if not settings.metrics_enabled or (settings.process_workers == 1 and not given):
        return None
    return pgw_metrics.prepare_multiprocess(given)


def parse_args(argv):
    p = argparse.ArgumentParser(description="OpenAI-compatible gateway for a PandoraNext-style backend-api")
    p.add_argument("--config", help="settings file (JSON); environment variables override it")
    p.add_argument("--demo", action="store_true", help="also run the bundled demo upstream and use it")
    return p.parse_args(argv)


def main(argv=None):
    """Run the gateway; start-up failures are one line on stderr (exit 2), Ctrl-C ends quietly."""
    try:
        return serve(argv)
    except StartupError as e:
        print(e, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        log.info("stopped (Ctrl-C)")
        return 130


def serve(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        settings = conf_settings.load(args.config)
    except conf_settings.SettingsError as e:
        print("settings: %s" % e, file=sys.stderr)
        return 2
    if settings.need_log_to_file:
        check_writable(os.path.abspath("log"), "the log directory (NEED_LOG_TO_FILE)")
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
    hint = pool_start_problem(settings)
    if hint:
        print("settings: %s" % hint, file=sys.stderr)
        return 2
    check_writable(settings.images_dir, "IMAGES_DIR")
    for warning in startup_warnings(settings):
        log.warning("%s", warning)
    use_event_loop(settings.event_loop)  # before forking and before any loop is made
    descriptors = raise_fd_limit()
    sockets = listen_sockets(settings)
    port = sockets[0].getsockname()[1]
    setup_metrics(settings)
    counts = None
    worker = None
    if settings.process_workers > 1:
        # The parent passes SIGHUP on (pgw/workers.py): each worker reloads its own pool.
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
    server_class = BalancedHTTPServer if counts is not None else GatewayHTTPServer
    # Connection limits and trusted proxies: pgw/listener.py. X-Forwarded-* only from TRUSTED_PROXIES.
    server = server_class(
        make_app(gateway), max_body_size=max(settings.max_request_body * 4, 64 << 20),
        max_header_size=settings.max_header_bytes, body_timeout=settings.body_timeout)
    max_connections = server.limit(settings, descriptors)
    if counts is not None:
        server.balance(counts, worker)
    server.add_sockets(sockets)
    gateway.start()
    server.request_callback.open_connections = lambda: len(server._connections)  # /healthz (Tornado's TCPServer)
    stop_on_signals(server, gateway)
    reload_on_sighup(gateway)
    log.info("listening on http://%s:%d (pid %d, at most %d connections of %d descriptors)", settings.host, port,
             worker or 0, max_connections, descriptors)
    if not args.demo and not worker:  # one probe, not one per worker
        tornado.ioloop.IOLoop.current().spawn_callback(probe_base_url, gateway)
    tune_gc()
    tornado.ioloop.IOLoop.current().start()
    return 0


if __name__ == "__main__":
    sys.exit(main())
