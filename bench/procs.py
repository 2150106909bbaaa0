"""The processes a bench scenario runs: the paced upstream, the real gateway (``server.py``),
nginx as a plain pass-through proxy (the floor a streamed event's cost is compared with) and
the gateway's own stack passing bytes through (``bench/tornado_floor.py``, the second floor).

CPU seconds and RSS come from /proc; with PROCESS_WORKERS > 1 the forked workers are counted
too (every process whose parent is the server). ``pin`` binds a process (and its threads) to
CPUs: S1 puts the proxy under test on one core, the upstream and the load generator on the other.
"""

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import ujson
import urllib.request

from devkit.procs import ChildProcess

_TICK = os.sysconf("SC_CLK_TCK")


class Process(ChildProcess):
    """A child process that prints ``listening on http://...`` once it is ready."""

    def __init__(self, args, env=None, timeout=60):
        super().__init__(args, env=env, pattern=r"listening on (http://[\d.:]+)", timeout=timeout, prefix="bench-")
        self.url = self.match.group(1)

    def pids(self):
        """This process and its children (forked workers)."""
        found = [self.pid]
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open("/proc/%s/stat" % entry) as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[1]) == self.pid:
                    found.append(int(entry))
        return found

    def cpu_seconds(self, each=False):
        """CPU seconds (user + system) of the process and its children; ``each``: per process."""
        total, per = 0, []
        for pid in self.pids():
            try:
                with open("/proc/%d/stat" % pid) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            ticks = int(fields[11]) + int(fields[12])  # utime, stime
            total += ticks
            per.append(ticks / _TICK)
        return per if each else total / _TICK

    def pin(self, cpus):
        """Run this process (every thread of it, and its children) on ``cpus`` only."""
        for pid in self.pids():
            for tid in os.listdir("/proc/%d/task" % pid):
                try:
                    os.sched_setaffinity(int(tid), cpus)
                except OSError:
                    pass
        return self

    def memory_kb(self, field):
        """Sum of a /proc/PID/status field (VmRSS now, VmHWM peak) over the processes, in KB."""
        total = 0
        for pid in self.pids():
            try:
                with open("/proc/%d/status" % pid) as f:
                    for line in f:
                        if line.startswith(field + ":"):
                            total += int(line.split()[1])
            except OSError:
                continue
        return total

    def stop(self):
        children = self.pids()[1:]
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for pid in children:  # forked workers outlive a terminated parent unless told
            try:
                os.kill(pid, 15)
            except OSError:
                pass
        super().stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class Upstream(Process):
    def __init__(self, events, chars, interval_ms, dialect="legacy"):
        super().__init__([sys.executable, "-m", "bench.upstream", "--events", str(events), "--chars", str(chars),
                          "--interval-ms", str(interval_ms), "--dialect", dialect])
        self.events, self.chars, self.interval = events, chars, interval_ms / 1000.0
        self.upstream_bytes = int(re.search(r"(\d+) bytes of events", self.log_text()).group(1))

    def stats(self):
        with urllib.request.urlopen(self.url + "/_bench/stats", timeout=30) as r:
            return ujson.loads(r.read())


class Server(Process):
    """``server.py`` as a user runs it, settings from the environment."""

    def __init__(self, base_url, workers=1, **settings):
        env = dict(os.environ)
        env.update({"BASE_URL": base_url, "HOST": "127.0.0.1", "PORT": "0", "LOG_LEVEL": "INFO",
                    "PROCESS_WORKERS": str(workers),
                    # the bench upstream answers the PATCH, but it is not what is measured
                    "NEED_DELETE_CONVERSATION_AFTER_RESPONSE": "false"})
        env.update({k: str(v) for k, v in settings.items()})
        super().__init__([sys.executable, "server.py"], env=env)
        self.workers = workers
        deadline = time.monotonic() + 30
        while workers > 1 and len(self.pids()) < workers + 1 and time.monotonic() < deadline:
            time.sleep(0.05)


class TornadoFloor(Process):
    """``bench/tornado_floor.py``: Tornado + its pycurl client passing the upstream's bytes
    through, no conversion; ``loop``: ``asyncio`` or ``uvloop``; ``lean``: with the gateway's short
    cuts around Tornado's callbacks and writes."""

    def __init__(self, upstream_url, loop="asyncio", lean=False):
        super().__init__([sys.executable, "-m", "bench.tornado_floor", "--upstream", upstream_url, "--loop", loop]
                         + (["--lean"] if lean else []))


def pinning():
    """``(proxy CPUs, upstream and load generator CPUs)``: one core each, as S1 runs; None on a
    machine with a single usable core (nothing is pinned then)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    return {cpus[0]}, {cpus[1]}


NGINX_CONF = """
worker_processes 1;
master_process off;
daemon off;
pid %(dir)s/nginx.pid;
error_log stderr warn;
worker_rlimit_nofile %(fds)d;
events { worker_connections %(connections)d; multi_accept on; }
http {
    access_log off;
    client_body_temp_path %(dir)s/body;
    proxy_temp_path %(dir)s/proxy;
    fastcgi_temp_path %(dir)s/fastcgi;
    uwsgi_temp_path %(dir)s/uwsgi;
    scgi_temp_path %(dir)s/scgi;
    upstream bench { server %(upstream)s; keepalive 1024; }
    server {
        listen 127.0.0.1:%(port)d backlog=4096;
        location = /v1/chat/completions {
            proxy_pass http://bench/backend-api/conversation;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 3600s;
        }
    }
}
"""


def nginx_binary():
    """The nginx binary, installed from the Debian package when missing; None if that fails
    (the reason is printed: the bench then says loudly that the floor is missing)."""
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if found:
        return found
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for attempt in ("install", "update-then-install"):
        if attempt == "update-then-install":
            subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=600)
        for package in ("nginx-light", "nginx"):
            try:
                done = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", package], env=env,
                                      capture_output=True, text=True, timeout=600)
            except (OSError, subprocess.TimeoutExpired) as e:
                print("bench: cannot install nginx: %s" % e, file=sys.stderr)
                return None
            found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
            if done.returncode == 0 and found:
                return found
            last = (done.stdout + done.stderr).strip().splitlines()[-1:] or ["(no output)"]
            print("bench: apt-get install %s failed: %s" % (package, last[0]), file=sys.stderr)
    return None


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Nginx(Process):
    """nginx as a plain streaming proxy in front of ``upstream_url``: one process (no master),
    ``proxy_buffering off``, HTTP/1.1 keep-alive to the upstream; the chat path is mapped to the
    upstream's conversation path, so the load generator's requests reach the same answers."""

    def __init__(self, binary, upstream_url, connections=20000):
        self.dir = tempfile.mkdtemp(prefix="bench-nginx-")
        port = _free_port()
        with open(os.path.join(self.dir, "nginx.conf"), "w") as f:
            f.write(NGINX_CONF % {"dir": self.dir, "port": port, "upstream": upstream_url.split("//", 1)[1],
                                  "connections": connections, "fds": 2 * connections + 64})
        # nginx prints nothing once it listens: the line Process waits for comes from a probe
        # that starts it and then only waits (its CPU is spent before any measurement starts).
        probe = ("import socket, subprocess, sys, time\n"
                 "p = subprocess.Popen(sys.argv[1:])\n"
                 "while p.poll() is None:\n"
                 "    try:\n"
                 "        socket.create_connection(('127.0.0.1', %d), 0.2).close(); break\n"
                 "    except OSError: time.sleep(0.02)\n"
                 "print('nginx listening on http://127.0.0.1:%d', flush=True)\n"
                 "sys.exit(p.wait())\n" % (port, port))
        conf = os.path.join(self.dir, "nginx.conf")
        super().__init__([sys.executable, "-c", probe, binary, "-p", self.dir, "-c", conf])

    def stop(self):
        super().stop()
        shutil.rmtree(self.dir, ignore_errors=True)
