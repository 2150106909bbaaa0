"""Shared fixtures: the fake upstream and real gateway processes on free loopback ports.

The fake upstream runs once per session; every test uses its own API key, so the plan it sets
(``upstream.plan(key, ...)``) and the requests it reads back (``upstream.log(key)``) are its
own. ``start_gateway(**settings)`` runs ``server.py`` as a subprocess with those settings as
environment variables, exactly as a user would run it.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")

START_TIMEOUT = 15


def _wait_for_line(path, pattern, proc, timeout=START_TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(path, encoding="utf-8", errors="replace") as f:
            m = re.search(pattern, f.read())
        if m:
            return m
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    with open(path, encoding="utf-8", errors="replace") as f:
        raise RuntimeError("process did not start (exit %s):\n%s" % (proc.poll(), f.read()[-3000:]))


class Process:
    def __init__(self, args, env=None, pattern=r"listening on (http://\S+)", cwd=ROOT):
        self.logfile = tempfile.NamedTemporaryFile(prefix="gw-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=self.logfile, stderr=subprocess.STDOUT)
        self.match = _wait_for_line(self.logfile.name, pattern, self.proc)

    def log_text(self):
        with open(self.logfile.name, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        os.unlink(self.logfile.name)


def http(method, url, body=None, headers=None, timeout=10):
    """A plain HTTP call: ``(status, headers, body bytes)``, errors included."""
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


class FakeUpstream(Process):
    def __init__(self):
        super().__init__([sys.executable, "-m", "fakeupstream", "--port", "0"])
        self.url = self.match.group(1)

    def plan(self, key, **plan):
        plan["key"] = key
        status, _, body = http("POST", self.url + "/_fake/plan", plan)
        assert status == 200, body

    def release(self, key):
        status, _, body = http("POST", self.url + "/_fake/release?key=" + key, b"")
        assert status == 200, body

    def log(self, key):
        status, _, body = http("GET", self.url + "/_fake/log?key=" + key)
        assert status == 200
        return json.loads(body)

    def conversations(self, key):
        return [r for r in self.log(key) if r["method"] == "POST" and r["path"].endswith("/conversation")]

    def wait_log(self, key, predicate, timeout=5):
        """Poll the log until ``predicate(records)`` holds; return the records."""
        deadline = time.monotonic() + timeout
        records = self.log(key)
        while not predicate(records) and time.monotonic() < deadline:
            time.sleep(0.05)
            records = self.log(key)
        return records


class Gateway(Process):
    """``server.py`` with ``settings`` as environment variables; ``cwd``: its working directory
    (where relative paths such as log/ and ./gpts.json are read)."""

    def __init__(self, settings, cwd=ROOT):
        env = dict(os.environ)
        env.update({k: str(v) for k, v in settings.items()})
        env.setdefault("PORT", "0")
        env.setdefault("HOST", "127.0.0.1")
        self.images_dir = tempfile.mkdtemp(prefix="gw-images-")  # saved images stay out of the work tree
        env.setdefault("IMAGES_DIR", self.images_dir)
        super().__init__([sys.executable, os.path.join(ROOT, "server.py")], env=env, cwd=cwd)
        self.url = self.match.group(1).replace("0.0.0.0", "127.0.0.1")

    def stop(self):
        super().stop()
        shutil.rmtree(self.images_dir, ignore_errors=True)

    def client(self, key, prefix=""):
        from openai import OpenAI
        return OpenAI(base_url=self.url + prefix + "/v1", api_key=key, max_retries=0, timeout=20)


@pytest.fixture(scope="session")
def upstream():
    fake = FakeUpstream()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def gateway_factory(upstream):
    started = []

    def start(**settings):
        settings.setdefault("BASE_URL", upstream.url)
        gw = Gateway(settings)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()


@pytest.fixture(scope="session")
def gateway(gateway_factory):
    """A gateway with default settings, shared by the tests that need nothing special."""
    return gateway_factory()


@pytest.fixture
def key():
    """A fresh API key: the fake upstream keys its plans and logs by it."""
    return "fk-test-" + uuid.uuid4().hex


def feed_all(conversion, pieces):
    """Feed a converter the network pieces of one answer, then close it: all the client gets."""
    out = []
    for piece in pieces:
        out.extend(conversion.feed(piece))
    out.extend(conversion.close())
    return out


def read_fixture(name):
    with open(os.path.join(FIXTURES, name), "rb") as f:
        return f.read()
