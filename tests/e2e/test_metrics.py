"""GET /metrics: Prometheus text, counted per request and per sweep, added up across workers."""

import threading
import time

from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import http

USER = [{"role": "user", "content": "hi"}]


def scrape(gw, headers=None):
    status, h, raw = http("GET", gw.url + "/metrics", headers=headers)
    assert status == 200, raw
    assert h["Content-Type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(raw.decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def chat(gw, key, **extra):
    body = {"model": "gpt-4-s", "messages": USER}
    body.update(extra)
    return http("POST", gw.url + "/v1/chat/completions", body,
                {"Authorization": "Bearer " + key, "Content-Type": "application/json"}, timeout=20)


def wait_value(gw, name, wanted, timeout=5, **labels):
    deadline = time.monotonic() + timeout
    while True:
        got = value(scrape(gw), name, **labels)
        if got == wanted or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def test_requests_are_counted_by_endpoint_status_and_model_with_timings(gateway_factory, upstream, key):
    gw = gateway_factory()
    for stream in (False, True, True):
        assert chat(gw, key, stream=stream)[0] == 200
    assert chat(gw, key, model="no-such-model")[0] == 404
    wait_value(gw, "pgw_request_duration_seconds_count", 4, endpoint="/v1/chat/completions")
    s = scrape(gw)
    chat_ok = dict(endpoint="/v1/chat/completions", status="200", model="gpt-4-s")
    assert value(s, "pgw_requests_total", **chat_ok) == 3
    # a model nobody configured is not a label of its own: clients cannot grow the series
    assert value(s, "pgw_requests_total", endpoint="/v1/chat/completions", status="404", model="other") == 1
    assert value(s, "pgw_time_to_first_byte_seconds_count", endpoint="/v1/chat/completions") == 4
    assert value(s, "pgw_request_duration_seconds_count", endpoint="/v1/chat/completions") == 4
    assert value(s, "pgw_request_duration_seconds_bucket", endpoint="/v1/chat/completions", le="+Inf") == 4


def test_upstream_errors_by_status_and_saved_bytes(gateway_factory, upstream, key):
    gw = gateway_factory()
    upstream.plan(key, status=429)
    assert chat(gw, key)[0] == 429
    upstream.plan(key, scenario="dalle")
    assert chat(gw, key)[0] == 200
    wait_value(gw, "pgw_saved_files_total", 1)
    s = scrape(gw)
    assert value(s, "pgw_upstream_errors_total", status="429") == 1
    assert value(s, "pgw_saved_files_total") == 1
    assert value(s, "pgw_saved_file_bytes_total") > 0
    assert value(s, "pgw_requests_total", endpoint="/v1/chat/completions", status="429", model="gpt-4-s") == 1


def test_open_streams_and_keepalives_come_from_the_sweep(gateway_factory, upstream, key):
    gw = gateway_factory(KEEPALIVE_INTERVAL="0.2")
    upstream.plan(key, gate=2)  # the stream waits after its first pieces until released
    done = []
    t = threading.Thread(target=lambda: done.append(chat(gw, key, stream=True)))
    t.start()
    try:
        assert wait_value(gw, "pgw_open_streams", 1) == 1
        deadline = time.monotonic() + 5
        while value(scrape(gw), "pgw_keepalives_total") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert value(scrape(gw), "pgw_keepalives_total") >= 2
    finally:
        upstream.release(key)
        t.join(20)
    assert done and done[0][0] == 200
    assert wait_value(gw, "pgw_open_streams", 0) == 0


def test_metrics_key_guards_the_endpoint(gateway_factory):
    gw = gateway_factory(METRICS_KEY="scrape-secret-123456")
    status, _, _ = http("GET", gw.url + "/metrics")
    assert status == 401
    assert http("GET", gw.url + "/metrics", headers={"Authorization": "Bearer wrong"})[0] == 401
    assert "pgw_open_streams" in {n for n, _ in scrape(gw, {"Authorization": "Bearer scrape-secret-123456"})}


def test_metrics_can_be_turned_off(gateway_factory):
    gw = gateway_factory(METRICS_ENABLED="false")
    assert http("GET", gw.url + "/metrics")[0] == 404


def test_several_workers_add_up_and_start_from_zero(gateway_factory, upstream, key, tmp_path):
    stale = tmp_path / "prom"
    stale.mkdir()
    (stale / "counter_999999.db").write_bytes(b"not a metrics file")  # left by an earlier run
    gw = gateway_factory(PROCESS_WORKERS="2", PROMETHEUS_MULTIPROC_DIR=str(stale))
    n = 12
    for _ in range(n):
        assert chat(gw, key)[0] == 200
    # A request is counted just after its last byte went out: the scrape may beat the count by a moment.
    assert wait_value(gw, "pgw_requests_total", n, endpoint="/v1/chat/completions", status="200",
                      model="gpt-4-s") == n
    pids = {int(p.name.rsplit("_", 1)[1].split(".")[0]) for p in stale.glob("counter_*.db")}
    assert 999999 not in pids and len(pids) >= 1


def test_pass_through_model_names_do_not_grow_the_series(gateway_factory, key):
    gw = gateway_factory(PASS_THROUGH_MODELS="true")
    for name in ("gpt-4o-made-up-1", "gpt-4o-made-up-2"):
        assert chat(gw, key, model=name)[0] == 200
    assert wait_value(gw, "pgw_requests_total", 2, endpoint="/v1/chat/completions", status="200", model="other") == 2
    s = scrape(gw)
    assert not [k for k in s if ("model", "gpt-4o-made-up-1") in k[1]]
