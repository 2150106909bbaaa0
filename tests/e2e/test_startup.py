"""Start-up: bad settings stop it with one clear line; workers and log files work."""

import os
import re
import signal
import subprocess
import sys

import pytest

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


# --- start-up failures are one line; stopping is quiet (ops) ----------------------------------

def one_line_failure(done):
    """The one line that says why start-up stopped (besides the log lines before it)."""
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.strip().splitlines() if not re.match(r"\d{4}-\d\d-\d\d ", line)]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


def test_a_port_in_use_is_one_line_naming_the_port_and_the_setting(upstream, tmp_path):
    import socket
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    try:
        line = one_line_failure(run_server({"BASE_URL": upstream.url, "HOST": "127.0.0.1", "PORT": str(port),
                                            "IMAGES_DIR": str(tmp_path)}))
    finally:
        busy.close()
    assert "port %d is already in use" % port in line and "PORT" in line


def test_a_host_that_is_not_ours_is_one_line_naming_host(upstream, tmp_path):
    line = one_line_failure(run_server({"BASE_URL": upstream.url, "HOST": "192.0.2.1", "PORT": "0",
                                        "IMAGES_DIR": str(tmp_path)}))
    assert "HOST" in line and "192.0.2.1" in line


def test_an_images_dir_that_cannot_be_written_is_one_line(upstream, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    line = one_line_failure(run_server({"BASE_URL": upstream.url, "PORT": "0",
                                        "IMAGES_DIR": str(blocker / "images")}))
    assert line.startswith("IMAGES_DIR ") and "cannot be written" in line


def test_a_log_dir_that_cannot_be_written_is_one_line(upstream, tmp_path):
    (tmp_path / "log").write_text("a file where the log directory should be")
    full = dict(os.environ, BASE_URL=upstream.url, PORT="0", NEED_LOG_TO_FILE="true", IMAGES_DIR=str(tmp_path / "i"))
    done = subprocess.run([sys.executable, os.path.join(ROOT, "server.py")], cwd=str(tmp_path), env=full,
                          capture_output=True, text=True, timeout=15)
    line = one_line_failure(done)
    assert "log" in line and "NEED_LOG_TO_FILE" in line and "cannot be written" in line


def test_unreadable_config_and_gpts_files_are_one_line(upstream, tmp_path):
    done = subprocess.run([sys.executable, "server.py", "--config", str(tmp_path)], cwd=ROOT,
                          env=dict(os.environ, BASE_URL=upstream.url), capture_output=True, text=True, timeout=15)
    line = one_line_failure(done)
    assert line.startswith("settings: config file ") and "cannot be read" in line
    line = one_line_failure(run_server({"BASE_URL": upstream.url, "GPTS_CONFIG": str(tmp_path)}))
    assert line.startswith("settings: GPTS_CONFIG ") and "cannot be read" in line


def test_start_up_warns_once_about_what_will_bite_later(upstream):
    gw = Gateway({"BASE_URL": upstream.url, "BOT_MODE": "true", "IMAGES_MAX_TOTAL_MB": "0"})
    try:
        gw.wait_for("listening on")
        warnings = [line for line in gw.log_text().splitlines() if " WARNING " in line]
        assert len([w for w in warnings if "UPLOAD_BASE_URL is empty" in w]) == 1
        assert len([w for w in warnings if "IMAGES_MAX_AGE_HOURS=0" in w]) == 1
    finally:
        gw.stop()
    gw = Gateway({"BASE_URL": upstream.url, "UPLOAD_BASE_URL": "http://203.0.113.5:33333", "HOST": "0.0.0.0",
                  "IMAGES_MAX_AGE_HOURS": "24"})
    try:
        assert " WARNING " not in gw.log_text()
    finally:
        gw.stop()


def test_loopback_without_bot_mode_needs_no_upload_base_url(upstream):
    gw = Gateway({"BASE_URL": upstream.url, "HOST": "127.0.0.1", "IMAGES_MAX_AGE_HOURS": "24"})
    try:
        assert "UPLOAD_BASE_URL" not in "\n".join(x for x in gw.log_text().splitlines() if " WARNING " in x)
    finally:
        gw.stop()


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_and_sigterm_end_quietly(upstream, workers, sig):
    gw = Gateway({"BASE_URL": upstream.url, "PROCESS_WORKERS": workers})
    try:
        if workers == "2":
            gw.wait_for(r"listening on [^\n]*\n[^\n]*listening on")  # both workers
        gw.proc.send_signal(sig)
        gw.proc.wait(10)
        text = gw.log_text()
        assert "Traceback" not in text and "KeyboardInterrupt" not in text, text[-2000:]
    finally:
        gw.stop()
