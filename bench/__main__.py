"""``./run.sh bench [--smoke] [--only S1,S2,...]``: run the scenarios and print one table.

S1  streams held: a ladder of N concurrent paced streams (E events x T ms, C characters each), in
    the late-2023 framing and in the 2025-2026 one; beside some rungs the same load through nginx
    as a pass-through proxy (the floor: CPU per streamed event, gateway / nginx) and through the
    gateway's own stack passing bytes through (bench/tornado_floor.py: Tornado + pycurl, no
    conversion; gateway / floor is the gateway's own code, floor / nginx the stack's)
S2  conversion: in-process pipeline vs the ujson parse-only floor; end to end through the server
S3  memory: RSS per open idle stream
S4  processes: concurrent big answers with PROCESS_WORKERS=2 vs 1
S5  cost per event as an answer grows, legacy vs v1 (bench/delta_cost.py; also runs alone)
S6  slow readers: big answers at full speed to clients that read nothing for a while, memory
    held per stream with flow control (STREAM_BUFFER_BYTES) and without (a 1 GB mark)
Q1  the account queue: N concurrent requests over K one-at-a-time accounts, no pool / pool / pool in Redis
    (bench/queue.py)

Every stream's text is checked against the script's text ("exact"). ``--smoke`` runs it all
at tiny sizes in a few seconds (CI runs it; it asserts exactness only, never timings).
"""

import argparse
import asyncio
import os
import resource
import sys
import time

import tornado

from bench import convert, delta_cost, load, procs, queue, transcript
from pgw.server import raise_fd_limit

# ramp: seconds over which each rung's streams connect (N/ramp new streams per second);
# gentle: rungs repeated with 1,000 new streams per second, to tell holding from accepting.
# ladder: S1 rungs of the first dialect; ladder_other: of the other dialects; nginx_at: rungs
# (of every dialect) also run through nginx and the Tornado+pycurl floor.
FULL = dict(ladder=[250, 500, 1000, 2000, 4000], ladder_other=[1000, 4000], nginx_at=[2000, 4000],
            events=60, interval_ms=500, chars=4, ramp=1.0, gentle=[4000], big_events=4000, big_chars=4,
            idle=2000, s4_streams=8, s4_ramp=0.0, growth_events=20000, slow_streams=10, slow_events=2000,
            slow_chars=8000, slow_stall=5.0, queue_n=500, queue_k=5, queue_pace_ms=8)
SMOKE = dict(ladder=[20], ladder_other=[20], nginx_at=[20], events=5, interval_ms=20, chars=4, ramp=0.1, gentle=[],
             big_events=200, big_chars=4, idle=20, s4_streams=2, s4_ramp=0.0, growth_events=2000,
             slow_streams=2, slow_events=100, slow_chars=2000, slow_stall=1.0,
             queue_n=20, queue_k=2, queue_pace_ms=2)


# The framings S1 runs by default: the late-2023 one and the one live accounts send in 2025-2026.
DEFAULT_DIALECTS = ["legacy", "v1-2025" if "v1-2025" in transcript.DIALECTS else "v1"]


def _ms(seconds):
    return "-" if seconds is None else "%.0f" % (seconds * 1000)


class Table:
    def __init__(self):
        self.rows = []
        self.exact = True

    def add(self, scenario, setup, result, exact=True):
        self.rows.append((scenario, setup, result))
        self.exact = self.exact and exact
        print("  %s | %s | %s" % (scenario, setup, result), file=sys.stderr, flush=True)

    def print(self):
        print("| scenario | setup | result |")
        print("| --- | --- | --- |")
        for row in self.rows:
            print("| %s | %s | %s |" % row)
        print("\nexact: %s" % ("all texts exact" if self.exact else "SOME TEXTS WERE NOT EXACT"))


def streams(server, upstream, n, ramp, timeout, hold=None):
    """Run n streams against ``server``; return decoded results, server CPU seconds and wall time."""
    cpu0, t0 = server.cpu_seconds(), time.monotonic()
    clients = asyncio.run(load.run(server.url, n, ramp=ramp, timeout=timeout, hold=hold))
    wall = time.monotonic() - t0
    cpu = server.cpu_seconds() - cpu0
    return [load.Result(c) for c in clients], cpu, wall


class Pinned:
    """S1's pinning: the proxy under test on one core, the upstream and this process (the load
    generator) on the other, as nginx and the gateway are compared. Restores this process's CPUs."""

    def __init__(self):
        self.cpus = procs.pinning()
        self.saved = os.sched_getaffinity(0)

    def __enter__(self):
        if self.cpus is not None:
            os.sched_setaffinity(0, self.cpus[1])
        return self

    def pin(self, proxy, upstream):
        if self.cpus is not None:
            proxy.pin(self.cpus[0])
            upstream.pin(self.cpus[1])

    def describe(self):
        if self.cpus is None:
            return "not pinned (one core)"
        return "proxy on CPU %s, upstream + load generator on CPU %s" % (min(self.cpus[0]), min(self.cpus[1]))

    def __exit__(self, *exc):
        os.sched_setaffinity(0, self.saved)


def _lags(results, stats, revealed, interval):
    lags = []
    for r in results:
        lags.extend(r.lags(stats["t0"][r.key], revealed, interval))
    return lags


def s1(table, n, events, chars, interval_ms, ramp, dialect, nginx=None, floors=()):
    """n paced streams through the gateway; with ``nginx`` (its binary) the same load through
    nginx too, and the gateway's CPU per streamed event as a multiple of nginx's; for each of
    ``floors`` (``(event loop, lean)``) the same load through the Tornado+pycurl pass-through
    floor (bench/tornado_floor.py), and the ratios gateway/floor and floor/nginx."""
    rendered, text = transcript.render(events, chars, dialect)
    frames = transcript.frames(rendered)
    revealed = [chars_so_far for _, chars_so_far in frames]
    interval = interval_ms / 1000.0
    timeout = events * interval + ramp + 60
    setup = "N=%d, %d events x %g ms, C=%d, ramp %g s, %s" % (n, events, interval_ms, chars, ramp, dialect)
    with Pinned() as pinned:
        with procs.Upstream(events, chars, interval_ms, dialect) as up, procs.Server(up.url) as server:
            pinned.pin(server, up)
            results, cpu, wall = streams(server, up, n, ramp, timeout=timeout)
            stats = up.stats()
            peak = server.memory_kb("VmHWM")
            up_cpu = up.cpu_seconds()
        ok = [r for r in results if r.ok]
        exact = sum(1 for r in ok if r.text == text)
        ttfb = [r.ttfb() for r in ok if r.ttfb() is not None]
        lags = _lags(ok, stats, revealed, interval)
        errors = sorted({r.error for r in results if not r.ok})
        per_event = cpu / max(1, n * events)
        table.add("S1 streams held", "%s; %s" % (setup, pinned.describe()),
                  "completed %d, failed %d, exact %d/%d; TTFB p50/p99 %s/%s ms; added lag p50/p99 %s/%s ms; "
                  "server CPU %.2f s (%.0f us per streamed event), peak RSS %.0f MB; upstream late p99 %s ms, "
                  "upstream CPU %.1f s%s"
                  % (len(ok), n - len(ok), exact, len(ok), _ms(load.percentile(ttfb, 50)),
                     _ms(load.percentile(ttfb, 99)), _ms(load.percentile(lags, 50)), _ms(load.percentile(lags, 99)),
                     cpu, per_event * 1e6, peak / 1024.0, _ms(stats["late_p99"]), up_cpu,
                     ("; errors: " + "; ".join(errors[:3])) if errors else ""),
                  exact=exact == n)
        nginx_per_event = None
        if nginx is not None:
            nginx_per_event = s1_nginx(table, nginx, n, events, chars, interval_ms, ramp, dialect, rendered, frames,
                                       setup, pinned, per_event)
        for loop, lean in floors:
            s1_floor(table, loop, lean, n, events, chars, interval_ms, ramp, dialect, rendered, frames, setup, pinned,
                     per_event, nginx_per_event)


def _ratio(a, b):
    return "%.1fx" % (a / b) if a is not None and b else "-"


def passthrough(make_proxy, n, events, chars, interval_ms, ramp, dialect, rendered, frames, pinned):
    """The S1 load through a proxy that passes the upstream's events through unchanged (nginx,
    the Tornado floor). Exact: every body is as long as the upstream's events (message ids differ
    per rendering) and converts to the answer's text. Returns the row's figures."""
    interval = interval_ms / 1000.0
    size = sum(map(len, rendered))
    text = transcript.answer_text(events, chars)
    offsets, total = [], 0
    for raw, _ in frames:
        total += len(raw)
        offsets.append(total)
    with procs.Upstream(events, chars, interval_ms, dialect) as up, make_proxy(up.url) as proxy:
        pinned.pin(proxy, up)
        cpu0 = proxy.cpu_seconds()
        clients = asyncio.run(load.run(proxy.url, n, ramp=ramp, timeout=events * interval + ramp + 60))
        cpu = proxy.cpu_seconds() - cpu0
        stats = up.stats()
        peak = proxy.memory_kb("VmHWM")
    results = [load.PassResult(c) for c in clients]
    ok = [r for r in results if r.ok]
    exact = sum(1 for r in ok if len(r.text) == size and transcript.text_of(r.text) == text)
    ttfb = [r.ttfb() for r in ok if r.ttfb() is not None]
    lags = _lags(ok, stats, offsets, interval)
    errors = sorted({r.error for r in results if not r.ok})
    return dict(ok=len(ok), failed=n - len(ok), exact=exact, cpu=cpu, per_event=cpu / max(1, n * events),
                peak=peak, figures="completed %d, failed %d, exact %d/%d; TTFB p50/p99 %s/%s ms; added lag p50/p99 "
                "%s/%s ms" % (len(ok), n - len(ok), exact, len(ok), _ms(load.percentile(ttfb, 50)),
                              _ms(load.percentile(ttfb, 99)), _ms(load.percentile(lags, 50)),
                              _ms(load.percentile(lags, 99))),
                errors=("; errors: " + "; ".join(errors[:3])) if errors else "")


def s1_nginx(table, binary, n, events, chars, interval_ms, ramp, dialect, rendered, frames, setup, pinned,
             gateway_per_event):
    """The same S1 load through nginx, passing the upstream's events through unchanged: the floor
    for the cost of a streamed event (no conversion, C-level IO). Returns nginx's CPU per event."""
    m = passthrough(lambda url: procs.Nginx(binary, url), n, events, chars, interval_ms, ramp, dialect, rendered,
                    frames, pinned)
    table.add("S1 nginx floor", "%s; nginx pass-through (proxy_buffering off, upstream keep-alive); %s"
              % (setup, pinned.describe()),
              "%s; nginx CPU %.2f s (%.1f us per streamed event), peak RSS %.0f MB; gateway/nginx CPU per event: "
              "%s%s" % (m["figures"], m["cpu"], m["per_event"] * 1e6, m["peak"] / 1024.0,
                        _ratio(gateway_per_event, m["per_event"]), m["errors"]),
              exact=m["exact"] == n)
    return m["per_event"]


def s1_floor(table, loop, lean, n, events, chars, interval_ms, ramp, dialect, rendered, frames, setup, pinned,
             gateway_per_event, nginx_per_event):
    """The same S1 load through the gateway's own stack passing bytes through (Tornado's server
    and RequestHandler, its CurlAsyncHTTPClient over pycurl, ``write``+``flush`` per chunk): what
    the stack costs by itself, so gateway/floor is the gateway's own code and floor/nginx the
    stack's (bench/tornado_floor.py). ``lean``: with the gateway's short cuts around Tornado's
    per-chunk callbacks and writes (deliver after ``socket_action``, direct socket send)."""
    m = passthrough(lambda url: procs.TornadoFloor(url, loop, lean), n, events, chars, interval_ms, ramp, dialect,
                    rendered, frames, pinned)
    how = ("gateway's CancellableCurlClient + QueuedBuffer, direct socket send" if lean
           else "CurlAsyncHTTPClient, write+flush per chunk")
    table.add("S1 Tornado+pycurl %sfloor" % ("lean " if lean else ""),
              "%s; bench/tornado_floor.py%s pass-through (Tornado %s, %s loop, %s); %s"
              % (setup, " --lean" if lean else "", tornado.version, loop, how, pinned.describe()),
              "%s; floor CPU %.2f s (%.1f us per streamed event), peak RSS %.0f MB; gateway/floor CPU per event: "
              "%s; floor/nginx: %s%s" % (m["figures"], m["cpu"], m["per_event"] * 1e6, m["peak"] / 1024.0,
                                         _ratio(gateway_per_event, m["per_event"]),
                                         _ratio(m["per_event"], nginx_per_event), m["errors"]),
              exact=m["exact"] == n)


def s2_inprocess(table, events, chars, dialect):
    m = convert.measure(events, chars, dialect)
    table.add("S2 conversion in-process", "E=%d, C=%d, %s: %.1f MB of events, %d-char answer, in %d pieces "
              "(each event in writes of at most 16 KB, as libcurl passes it on)"
              % (events, chars, dialect, m["mb"], m["answer_chars"], m["pieces"]),
              "pipeline %.0f MB/s vs ujson.loads floor %.0f MB/s: %.2fx the floor; exact: %s"
              % (m["pipeline_mbps"], m["floor_mbps"], m["ratio"], m["exact"]), exact=m["exact"])


def big_answers(table, label, events, chars, n, workers, dialect, ramp=0.0, rounds=2):
    """n concurrent big answers, upstream at full speed; MB/s of upstream JSON converted.

    Time runs from the first request sent to the last byte read; best of ``rounds`` (the first
    round also pays for warming up the processes)."""
    text = transcript.answer_text(events, chars)
    best = None
    with procs.Upstream(events, chars, 0, dialect) as up, procs.Server(up.url, workers=workers) as server:
        for _ in range(rounds):
            cpu0, up0, me0 = server.cpu_seconds(each=True), up.cpu_seconds(), time.process_time()
            results, cpu, _ = streams(server, up, n, ramp=ramp, timeout=600)
            per = [round(b - a, 2) for a, b in zip(cpu0, server.cpu_seconds(each=True), strict=False)]
            others = (up.cpu_seconds() - up0, time.process_time() - me0)
            ok = [r for r in results if r.ok]
            exact = sum(1 for r in ok if r.text == text)
            span = max(r.arrivals[-1][0] for r in ok) - min(r.sent for r in ok) if ok else float("inf")
            if best is None or span < best[0]:
                best = (span, ok, exact, cpu, per, others)
    span, ok, exact, cpu, per, others = best
    mb = up.upstream_bytes * len(ok) / 1e6
    table.add(label, "%d x E=%d, C=%d (%.1f MB each), upstream full speed, PROCESS_WORKERS=%d%s"
              % (n, events, chars, up.upstream_bytes / 1e6, workers, ", ramp %g s" % ramp if ramp else ""),
              "%.0f MB/s of upstream JSON (%.2f s, best of %d); completed %d, exact %d; CPU s: server %.2f%s, "
              "upstream %.2f, load generator %.2f"
              % (mb / span, span, rounds, len(ok), exact, cpu,
                 " (per process %s)" % per if workers > 1 else "", others[0], others[1]), exact=exact == n)
    return mb / span


def s3(table, n, chars, dialect):
    """Streams that stay open and quiet: frame 0 sent, the next one an hour away."""
    with procs.Upstream(2, chars, 3600 * 1000, dialect) as up, procs.Server(up.url) as server:
        async def nothing():
            pass
        streams(server, up, 20, ramp=0.0, timeout=30, hold=nothing)  # warm-up
        base = server.memory_kb("VmRSS")
        seen = {}

        async def sample():
            seen["rss"] = server.memory_kb("VmRSS")
        results, _, _ = streams(server, up, n, ramp=1.0, timeout=60, hold=sample)
    held = sum(1 for r in results if r.arrivals)
    per = (seen["rss"] - base) / max(held, 1)
    table.add("S3 memory", "%d open idle streams (server RSS %.0f MB before, %.0f MB open)"
              % (n, base / 1024.0, seen["rss"] / 1024.0),
              "%.1f KB RSS per open stream (%d of %d streams had content when sampled)" % (per, held, n),
              exact=all(r.text == transcript.answer_text(2, chars)[:chars] for r in results if r.arrivals))


def s5(table, events, chars):
    """Cost per event as the answer grows: first vs last events of one long answer, per dialect."""
    for name in ("legacy", "v1"):
        costs, size = delta_cost.measure(transcript.DIALECTS[name], events, chars)
        lead = delta_cost.LEADING[name]
        text = costs[lead:lead + events - 1]
        window = min(delta_cost.WINDOW, len(text) // 2)
        first, last = sum(text[:window]) / window, sum(text[-window:]) / window
        table.add("S5 cost per event", "%s, E=%d, C=%d (%.1f MB of events)" % (name, events, chars, size / 1e6),
                  "first %d events %.1f us each, last %d %.1f us each: %.1fx"
                  % (window, first * 1e6, window, last * 1e6, last / first))


SLOW_RCVBUF = 16 * 1024  # a slow client's receive window: the kernel holds little for it


async def _stalled(server, n, stall):
    """Run the stalled streams; sample the server's RSS just before the clients start reading."""
    task = asyncio.ensure_future(load.run(server.url, n, ramp=0.0, timeout=600, stall=stall, rcvbuf=SLOW_RCVBUF))
    await asyncio.sleep(max(0.1, stall - 0.3))
    rss = server.memory_kb("VmRSS")
    return await task, rss


def s6(table, n, events, chars, stall):
    """n big v1 answers at full speed to clients that read nothing for ``stall`` seconds, then
    everything: server RSS near the end of the stall, with flow control and without."""
    text = transcript.answer_text(events, chars)
    cells, exact = [], True
    with procs.Upstream(events, chars, 0, "v1") as up:
        for label, mark in (("STREAM_BUFFER_BYTES default", None), ("no flow control (1 GB mark)", 1 << 30)):
            extra = {} if mark is None else {"STREAM_BUFFER_BYTES": mark}
            with procs.Server(up.url, **extra) as server:
                streams(server, up, 2, ramp=0.0, timeout=60)  # warm-up
                base = server.memory_kb("VmRSS")
                t0 = time.monotonic()
                clients, rss = asyncio.run(_stalled(server, n, stall))
                wall = time.monotonic() - t0
            ok = sum(1 for r in (load.Result(c) for c in clients) if r.ok and r.text == text)
            exact = exact and ok == n
            cells.append("%s: RSS +%.1f MB during the stall (%.0f KB per stream), exact %d/%d, all read in %.1f s"
                         % (label, (rss - base) / 1024.0, (rss - base) / n, ok, n, wall))
    table.add("S6 slow readers", "%d x v1 E=%d, C=%d (%.1f MB of upstream events each), upstream full speed; "
              "clients (16 KB receive window) read nothing for %g s, then all" % (n, events, chars,
                                                                                   up.upstream_bytes / 1e6, stall),
              "; ".join(cells), exact=exact)


def run_s1(table, cfg, dialects, no_nginx, floors=(("asyncio", False),)):
    """Every S1 rung of every dialect, nginx and the Tornado floors (``(event loop, lean)``)
    beside the rungs in ``nginx_at``."""
    nginx = None if no_nginx else procs.nginx_binary()
    if nginx is None:
        why = "--no-nginx given" if no_nginx else "nginx is missing and could not be installed"
        print("\n*** NGINX FLOOR NOT MEASURED: %s; the gateway/nginx ratio is missing ***\n" % why, flush=True)
        table.add("S1 nginx floor", "nginx pass-through", "NOT MEASURED: %s" % why)
    for k, dialect in enumerate(dialects):
        for n in cfg["ladder"] if k == 0 else cfg["ladder_other"]:
            s1(table, n, cfg["events"], cfg["chars"], cfg["interval_ms"], cfg["ramp"], dialect,
               nginx if n in cfg["nginx_at"] else None, floors if n in cfg["nginx_at"] else ())
        for n in cfg["gentle"] if k == 0 else ():
            s1(table, n, cfg["events"], cfg["chars"], cfg["interval_ms"], n / 1000.0, dialect)


def main(argv=None):  # noqa: C901 (one branch per option and scenario, read top to bottom)
    p = argparse.ArgumentParser(description="gateway benchmarks: prints a markdown table")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds (CI)")
    p.add_argument("--only", default="S1,S2,S3,S4,S5,S6,Q1", help="comma-separated scenarios to run")
    p.add_argument("--ladder", help="S1 stream counts, e.g. 250,500,1000")
    p.add_argument("--events", type=int, help="S1 events per stream")
    p.add_argument("--interval-ms", type=float, help="S1 interval between events")
    p.add_argument("--chars", type=int, help="S1 characters per event")
    p.add_argument("--ramp", type=float, help="S1 seconds over which the streams are opened")
    p.add_argument("--gentle", help="S1 rungs repeated with 1,000 new streams a second (default 4000; "
                                    "none when --ladder is given)")
    p.add_argument("--dialect", default=None,
                   help="comma-separated upstream stream formats for S1, the first also for S2-S4: %s "
                        "(fakeupstream/script.py renderers; default %s)"
                   % (", ".join(sorted(transcript.DIALECTS)), ",".join(DEFAULT_DIALECTS)))
    p.add_argument("--no-nginx", action="store_true", help="skip the nginx pass-through floor")
    p.add_argument("--no-floor", action="store_true", help="skip the Tornado+pycurl pass-through floor")
    p.add_argument("--floor-loop", choices=["asyncio", "uvloop"], default="asyncio",
                   help="the event loop of the Tornado+pycurl floor (default asyncio, as the gateway's)")
    p.add_argument("--lean-floor", action="store_true",
                   help="also the Tornado+pycurl floor with the gateway's short cuts around Tornado "
                        "(bench/tornado_floor.py --lean)")
    args = p.parse_args(argv)
    cfg = dict(SMOKE if args.smoke else FULL)
    for name in ("events", "interval_ms", "chars", "ramp"):
        if getattr(args, name) is not None:
            cfg[name] = getattr(args, name)
    if args.ladder:
        cfg["ladder"] = cfg["ladder_other"] = [int(x) for x in args.ladder.split(",")]
        cfg["gentle"] = []
    if args.gentle:
        cfg["gentle"] = [int(x) for x in args.gentle.split(",")]
    dialects = [d.strip() for d in args.dialect.split(",")] if args.dialect else DEFAULT_DIALECTS
    unknown = [d for d in dialects if d not in transcript.DIALECTS]
    if unknown:
        p.error("unknown dialect %s (known: %s)" % (", ".join(unknown), ", ".join(sorted(transcript.DIALECTS))))
    only = {s.strip().upper() for s in args.only.split(",")}
    limit = raise_fd_limit()

    load1, load5, load15 = os.getloadavg()
    print("machine: %d cores, load average %.2f %.2f %.2f at start, fd limit %d"
          % (os.cpu_count(), load1, load5, load15, limit))
    table = Table()
    if "S1" in only:
        floors = [] if args.no_floor else [(args.floor_loop, False)]
        if args.lean_floor:
            floors.append((args.floor_loop, True))
        run_s1(table, cfg, dialects, args.no_nginx, floors)
    dialect = dialects[0]
    if "S2" in only:
        s2_inprocess(table, cfg["big_events"], cfg["big_chars"], dialect)
        big_answers(table, "S2 conversion end to end", cfg["big_events"], cfg["big_chars"], 1, 1, dialect)
    if "S3" in only:
        s3(table, cfg["idle"], cfg["chars"], dialect)
    if "S4" in only:
        one = big_answers(table, "S4 one process", cfg["big_events"], cfg["big_chars"], cfg["s4_streams"], 1,
                          dialect, cfg["s4_ramp"], rounds=3)
        two = big_answers(table, "S4 two processes", cfg["big_events"], cfg["big_chars"], cfg["s4_streams"], 2,
                          dialect, cfg["s4_ramp"], rounds=3)
        table.add("S4 speed-up", "PROCESS_WORKERS=2 vs 1", "%.2fx" % (two / one))
    if "S5" in only:
        s5(table, cfg["growth_events"], cfg["big_chars"])
    if "S6" in only:
        s6(table, cfg["slow_streams"], cfg["slow_events"], cfg["slow_chars"], cfg["slow_stall"])
    if "Q1" in only:
        queue.q1(table, cfg["queue_n"], cfg["queue_k"], cfg["queue_pace_ms"])
    load1, load5, load15 = os.getloadavg()
    print("load average %.2f %.2f %.2f at end; bench process CPU %.1f s\n"
          % (load1, load5, load15, resource.getrusage(resource.RUSAGE_SELF).ru_utime
             + resource.getrusage(resource.RUSAGE_SELF).ru_stime))
    table.print()
    return 0 if table.exact else 1


if __name__ == "__main__":
    sys.exit(main())
