"""What tests share besides fixtures: HTTP calls, the fake upstream and gateway processes,
feeding a converter, reading transcript fixtures.

Tests import these directly (``from tests.helpers import http``); ``conftest.py`` only holds
the pytest fixtures built on them.
"""

import json
import os
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request

from devkit.procs import ROOT, ChildProcess

FIXTURES = os.path.join(ROOT, "tests", "unit", "fixtures")


def http(method, url, body=None, headers=None, timeout=10):
    """A plain HTTP call: ``(status, headers, body bytes)``, errors included."""
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


class FakeUpstream(ChildProcess):
    """``python -m fakeupstream`` on a free loopback port; plans and logs are per API key."""

    def __init__(self):
        super().__init__([sys.executable, "-m", "fakeupstream", "--port", "0"], prefix="fake-")
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


class Gateway(ChildProcess):
    """``server.py`` with ``settings`` as environment variables; ``cwd``: its working directory
    (where relative paths such as log/ and ./gpts.json are read); ``args``: a command that
    runs the server its own way (``python -m tests.gcprobe``)."""

    def __init__(self, settings, cwd=ROOT, args=None):
        env = dict(os.environ)
        env.update({k: str(v) for k, v in settings.items()})
        env.setdefault("PORT", "0")
        env.setdefault("HOST", "127.0.0.1")
        self.images_dir = tempfile.mkdtemp(prefix="gw-images-")  # saved images stay out of the work tree
        env.setdefault("IMAGES_DIR", self.images_dir)
        super().__init__(args or [sys.executable, os.path.join(ROOT, "server.py")], env=env, cwd=cwd, prefix="gw-")
        self.url = self.match.group(1).replace("0.0.0.0", "127.0.0.1")

    def stop(self, timeout=5):
        super().stop(timeout)
        shutil.rmtree(self.images_dir, ignore_errors=True)

    def client(self, key, prefix=""):
        from openai import OpenAI
        return OpenAI(base_url=self.url + prefix + "/v1", api_key=key, max_retries=0, timeout=20)


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
