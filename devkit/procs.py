"""Child processes that tests and benchmarks start: the real ``server.py``, the fake upstream.

The one place that knows how to start such a process and wait until it listens: each prints
``listening on http://HOST:PORT`` once its socket is bound, and its output goes to a log file
that the caller can read back (``log_text``) when something goes wrong.
"""

import os
import re
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LISTENING = r"listening on (http://\S+)"


class ChildProcess:
    """Start ``args`` and wait until its log matches ``pattern`` (``match`` keeps the match).

    Raises ``RuntimeError`` with the end of the log if the process exits or ``timeout`` passes first.
    """

    def __init__(self, args, env=None, pattern=LISTENING, cwd=ROOT, timeout=15, prefix="child-"):
        self.logfile = tempfile.NamedTemporaryFile(prefix=prefix, suffix=".log", delete=False)  # noqa: SIM115
        self.proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=self.logfile, stderr=subprocess.STDOUT)
        self.match = self.wait_for(pattern, timeout)

    @property
    def pid(self):
        return self.proc.pid

    def log_text(self):
        with open(self.logfile.name, encoding="utf-8", errors="replace") as f:
            return f.read()

    def wait_for(self, pattern, timeout=15):
        """The first match of ``pattern`` in the log, waiting for it while the process runs."""
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.log_text())
            if m:
                return m
            if self.proc.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        text = self.log_text()
        self.stop()
        raise RuntimeError("%s did not start (exit %s):\n%s" % (self.proc.args, self.proc.poll(), text[-3000:]))

    def stop(self, timeout=5):
        """Terminate (then kill) the process and remove its log file."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        self.logfile.close()
        try:
            os.unlink(self.logfile.name)
        except FileNotFoundError:
            pass
