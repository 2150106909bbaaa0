"""Start-up: bad settings stop it with one clear line; workers and log files work."""

import os
import subprocess
import sys

from tests.helpers import ROOT, Gateway, http


def run_server(env, timeout=15):
    full = dict(os.environ)
    full.update(env)
    return subprocess.run([sys.executable, "server.py"], cwd=ROOT, env=full, capture_output=True,
                          text=True, timeout=timeout)


def test_without_base_url_it_refuses_with_a_hint():
    env = {k: v for k, v in os.environ.items() if k != "BASE_URL"}
    done = subprocess.run([sys.executable, "server.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=15)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "BASE_URL" in lines[0] and "--demo" in lines[0]


def test_bad_value_stops_start_up_with_one_line_naming_it():
    done = run_server({"BASE_URL": "http://127.0.0.1:9", "PORT": "abc"})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["settings: PORT must be a whole number, got 'abc'"]


def test_two_worker_processes_serve(upstream, key):
    gw = Gateway({"BASE_URL": upstream.url, "PROCESS_WORKERS": "2"})
    try:
        for _ in range(4):
            done = gw.client(key).chat.completions.create(model="gpt-4-s", messages=[{"role": "user", "content": "hi"}])
            assert done.choices[0].message.content.endswith("you said “hi”.")
        assert http("GET", gw.url + "/healthz")[0] == 200
    finally:
        gw.stop()


def test_log_to_file_writes_daily_files_under_log_with_keys_masked(upstream, tmp_path):
    gw = Gateway({"BASE_URL": upstream.url, "NEED_LOG_TO_FILE": "true", "KEY_FOR_GPTS_INFO": "fk-secret-gpts-key-1234"},
                 cwd=str(tmp_path))
    try:
        with open(os.path.join(str(tmp_path), "log", "gateway.log"), encoding="utf-8") as f:
            text = f.read()
        assert "[%d]" % gw.proc.pid in text and "listening on" in text
        assert "fk-secret-gpts-key-1234" not in text and "fk-s…1234" in text
    finally:
        gw.stop()


def test_debug_logging_never_shows_a_full_key(upstream, key):
    gw = Gateway({"BASE_URL": upstream.url, "LOG_LEVEL": "DEBUG"})
    try:
        gw.client(key).chat.completions.create(model="gpt-4-s", messages=[{"role": "user", "content": "hi"}])
        upstream.wait_log(key, lambda rs: any(r["method"] == "PATCH" for r in rs))
        text = gw.log_text()
        assert "DEBUG" in text
        assert key not in text
    finally:
        gw.stop()
