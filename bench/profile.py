"""Where a streamed event's cost goes: the gateway under callgrind (instruction counts, repeatable
on a busy machine) or py-spy (where the time goes, by Python function), on S1-like load.

    .venv/bin/python -m bench.profile callgrind [--streams 200] [--events 20] [--dialect legacy]
    .venv/bin/python -m bench.profile pyspy [--streams 2000] [--events 60] [--native] [--target floor]

callgrind: the server runs under ``valgrind --tool=callgrind`` three times (no streams; N streams
of E events; N of 2E), so instructions per streamed event and per stream set up come out of the
differences; prints them and the top functions of the last run (``callgrind_annotate``).
Settings for the server come from ``-e NAME=VALUE``. py-spy's ``--target floor`` (or
``lean-floor``) samples bench/tornado_floor.py (``--lean``) instead of the gateway: where the
stack's own time goes when it only passes bytes through. Instruction counts depend on how many events
share a loop turn, which the machine's load changes: two runs of ``--streams 100 --events 10`` on
a loaded machine gave 157k and 248k instructions per event, so use it for large differences only.
"""

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile

from bench import load, procs, transcript


class Valgrinded(procs.Process):
    """``server.py`` under callgrind; the counts are written when it is stopped."""

    def __init__(self, base_url, out, settings):
        env = dict(os.environ, BASE_URL=base_url, HOST="127.0.0.1", PORT="0", LOG_LEVEL="INFO",
                   PROCESS_WORKERS="1", NEED_DELETE_CONVERSATION_AFTER_RESPONSE="false", **settings)
        super().__init__(["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out,
                          sys.executable, "server.py"], env=env, timeout=300)

    def stop(self):
        if self.proc.poll() is None:  # SIGINT: the server ends its loop, callgrind writes its file
            self.proc.send_signal(2)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                pass
        super().stop()


def _counted(args, streams, events):
    """Total instructions of one server run with ``streams`` x ``events``; the annotation; exact."""
    out = os.path.join(tempfile.mkdtemp(prefix="bench-callgrind-"), "callgrind.out")
    interval = args.interval_ms / 1000.0
    settings = dict(s.split("=", 1) for s in args.setting)
    with procs.Upstream(events, args.chars, args.interval_ms, args.dialect) as up, \
            Valgrinded(up.url, out, settings) as server:
        clients = asyncio.run(load.run(server.url, streams, ramp=args.ramp,
                                       timeout=events * interval + args.ramp + 300)) if streams else []
    text = transcript.answer_text(events, args.chars)
    exact = sum(1 for c in clients if load.Result(c).text == text)
    annotated = subprocess.run(["callgrind_annotate", "--inclusive=%s" % ("yes" if args.inclusive else "no"),
                                "--threshold=100", out], capture_output=True, text=True).stdout
    total = int(re.search(r"([\d,]+) \(100.0%\) +PROGRAM TOTALS", annotated).group(1).replace(",", ""))
    return total, annotated, exact, out


def callgrind(args):
    """Instructions per streamed event as the difference of two runs that differ only in the
    number of events per stream (start-up and set-up cancel out), set-up per stream against a
    run with no streams; then the functions of the longer run."""
    n, e1, e2 = args.streams, args.events, 2 * args.events
    base, _, _, _ = _counted(args, 0, e1)
    short, annotated1, exact1, _ = _counted(args, n, e1)
    long_, annotated2, exact2, out = _counted(args, n, e2)
    events = n * (e2 - e1)
    per_event = (long_ - short) / events
    setup = (short - base - per_event * n * e1) / n
    print("%s, %d streams: %.0f instructions per streamed event, %.0f per stream set up (start-up %s); "
          "exact %d/%d and %d/%d; callgrind file %s"
          % (args.dialect, n, per_event, setup, format(base, ","), exact1, n, exact2, n, out))
    one, two = _functions(annotated1), _functions(annotated2)
    per = {k: (two.get(k, 0) - one.get(k, 0)) / events for k in set(one) | set(two)}
    by_object = {}
    for (obj, _), v in per.items():
        by_object[obj] = by_object.get(obj, 0) + v
    print("--- per streamed event, by library")
    for obj, v in sorted(by_object.items(), key=lambda kv: -kv[1])[:12]:
        print("%9.0f  %5.1f%%  %s" % (v, 100 * v / per_event, obj))
    print("--- per streamed event, by function (%s)" % ("inclusive" if args.inclusive else "self"))
    for (obj, fn), v in sorted(per.items(), key=lambda kv: -kv[1])[:args.top]:
        print("%9.0f  %5.1f%%  %s  [%s]" % (v, 100 * v / per_event, fn, obj))


def _functions(annotated):
    """``{(library, function): instructions}`` from a ``callgrind_annotate`` listing."""
    found = {}
    for line in annotated.splitlines():
        m = re.match(r"\s*([\d,]+) \([\s\d.]+%\)\s+(.*?)(?: \[(.*)\])?$", line)
        if not m or "PROGRAM TOTALS" in line:
            continue
        where = m.group(2)
        fn = where.rsplit(":", 1)[-1].split("'")[0]
        obj = (m.group(3) or "?").rsplit("/", 1)[-1]
        found[(obj, fn)] = found.get((obj, fn), 0) + int(m.group(1).replace(",", ""))
    return found


def pyspy(args):
    pins = procs.pinning()
    if pins:
        os.sched_setaffinity(0, pins[1])
    interval = args.interval_ms / 1000.0
    out = os.path.join(tempfile.mkdtemp(prefix="bench-pyspy-"), "profile.txt")
    settings = dict(s.split("=", 1) for s in args.setting)
    def target(url):
        if args.target == "gateway":
            return procs.Server(url, **settings)
        return procs.TornadoFloor(url, settings.get("EVENT_LOOP", "asyncio"), lean=args.target == "lean-floor")

    with procs.Upstream(args.events, args.chars, args.interval_ms, args.dialect) as up, target(up.url) as server:
        if pins:
            server.pin(pins[0])
            up.pin(pins[1])
        spy = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "py-spy"), "record", "--pid",
                                str(server.pid), "-d", str(int(args.events * interval + args.ramp)), "-r", "250",
                                "-f", "raw", "-o", out] + (["--native"] if args.native else []),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cpu0 = server.cpu_seconds()
        clients = asyncio.run(load.run(server.url, args.streams, ramp=args.ramp,
                                       timeout=args.events * interval + args.ramp + 60))
        cpu = server.cpu_seconds() - cpu0
        spy.wait()
    ok = sum(1 for c in clients if (load.Result(c) if args.target == "gateway" else load.PassResult(c)).ok)
    print("%s: streams %d, ok %d, server CPU %.2f s, %.1f us per streamed event; raw profile %s"
          % (args.target, args.streams, ok, cpu, cpu / (args.streams * args.events) * 1e6, out))
    summarize(out, args.top)


# Where a sample's time goes: the first rule (innermost frame first) that matches it. A stack
# that passes through request handling or transfer set-up is set-up, whatever its leaf.
SETUP = ("_server_request_loop", "RequestHandler._execute", "fetch_impl", "_process_queue",
         "ConversationRun.run", "_curl_setup_request", "HTTP1Connection._read_message")
CATEGORIES = [
    ("GC", lambda f, p: f.startswith("<gc>") or "gc_collect" in f),
    ("JSON (ujson.loads of each event)", lambda f, p: f == "read_event" or "ujson" in f),
    ("SSE framing", lambda f, p: "converters/sse.py" in p),
    ("chunk encoding", lambda f, p: "converters/openai_format.py" in p),
    ("stages (dialect, answer, render)", lambda f, p: "converters/" in p),
    ("timers (curl timeouts, sweep)", lambda f, p: any(t in f for t in ("_handle_timeout", "_set_timeout",
                                                                          "StreamWatch", "PeriodicCallback",
                                                                          "call_at", "add_timeout",
                                                                          "remove_timeout", "TimerHandle"))),
    ("relay and sink (runtime.py)", lambda f, p: "pgw/runtime.py" in p),
    ("libcurl callback (socket_action, body queue)", lambda f, p: "curl_httpclient.py" in p
     or "pgw/upstream.py" in p),
    ("Tornado write and flush", lambda f, p: any(t in p for t in ("tornado/iostream.py", "tornado/web.py",
                                                                  "tornado/http1connection.py",
                                                                  "handlers/base.py"))),
    ("event loop (select, callbacks)", lambda f, p: "asyncio/" in p or "tornado/platform/asyncio.py" in p
     or "tornado/ioloop.py" in p or "selectors.py" in p),
]


def categorize(frames):
    """The category of one sample (its frames, outermost first)."""
    if any(any(mark in frame for mark in SETUP) for frame in frames):
        return "connection set-up (request, transfer start)"
    for frame in reversed(frames):
        name, _, where = frame.partition(" (")
        for category, match in CATEGORIES:
            if match(name, where):
                return category
    return "other"


def summarize(path, top):
    """Shares of a py-spy raw profile: by category, by function (self) and inclusive."""
    total = 0
    own, incl, cats = {}, {}, {}
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip().rpartition(" ")
            count = int(count)
            total += count
            frames = stack.split(";")
            keys = []
            for frame in frames:
                name, _, where = frame.partition(" (")
                keys.append("%s (%s)" % (name, where.split(":")[0].rsplit("/", 1)[-1]))
            own[keys[-1]] = own.get(keys[-1], 0) + count
            for k in set(keys):
                incl[k] = incl.get(k, 0) + count
            c = categorize(frames)
            cats[c] = cats.get(c, 0) + count
    for title, counts, n in (("by category", cats, 20), ("self", own, top), ("inclusive", incl, top)):
        print("--- %s (%d samples)" % (title, total))
        for k, v in sorted(counts.items(), key=lambda kv: -kv[1])[:n]:
            print("%5.1f%%  %s" % (100.0 * v / max(total, 1), k))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("tool", choices=["callgrind", "pyspy", "summarize"])
    p.add_argument("profile", nargs="?", help="summarize: a py-spy raw profile")
    p.add_argument("--streams", type=int)
    p.add_argument("--events", type=int)
    p.add_argument("--interval-ms", type=float, default=500)
    p.add_argument("--chars", type=int, default=4)
    p.add_argument("--ramp", type=float, default=1.0)
    p.add_argument("--dialect", default="legacy", choices=sorted(transcript.DIALECTS))
    p.add_argument("--inclusive", action="store_true", help="callgrind: inclusive costs")
    p.add_argument("--native", action="store_true", help="py-spy: C frames too")
    p.add_argument("--top", type=int, default=40)
    p.add_argument("--target", choices=["gateway", "floor", "lean-floor"], default="gateway",
                   help="pyspy: the process sampled (floor: bench/tornado_floor.py; -e EVENT_LOOP=uvloop for its loop)")
    p.add_argument("-e", dest="setting", action="append", default=[], help="a server setting NAME=VALUE")
    args = p.parse_args(argv)
    if args.tool == "summarize":
        summarize(args.profile, args.top)
    elif args.tool == "callgrind":
        args.streams = args.streams or 200
        args.events = args.events or 20
        callgrind(args)
    else:
        args.streams = args.streams or 2000
        args.events = args.events or 60
        pyspy(args)


if __name__ == "__main__":
    sys.exit(main())
