"""The processes a bench scenario runs: the paced upstream and the real gateway (``server.py``).

CPU seconds and RSS come from /proc; with PROCESS_WORKERS > 1 the forked workers are counted
too (every process whose parent is the server).
"""

import os
import re
import subprocess
import sys
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
