"""Review of issues 12 and 13 together: pictures drawn through an access key (the account pool).

``images.generate(model="gpt-image-1", n=3)`` over two accounts that answer one message at a
time: every picture arrives, no account is asked twice at once, every lease comes back. A client
that leaves while its picture is drawn gives its account back and stops the polling.
"""

import base64
import json
import socket
import time
from http.client import HTTPConnection

import pytest

from tests.e2e.test_pool import (admin, assert_one_at_a_time, new_accounts, send_on_connection, start_pool,
                                 wait_until)

pytestmark = pytest.mark.e2e

FAST = {"IMAGE_POLL_INTERVAL": "0.1", "KEEPALIVE_INTERVAL": "0.2", "QUEUE_TIMEOUT": "20"}


def polls(upstream, sub):
    return [r for r in upstream.log(sub) if r["method"] == "GET" and "/conversation/" in r["path"]
            and "/attachment/" not in r["path"]]


def test_gpt_image_n3_over_two_accounts_one_at_a_time_and_every_lease_back(gateway_factory, upstream, tmp_path):
    subs, tokens = new_accounts(2, "img")
    for sub in subs:
        upstream.plan(sub, scenario="image_gen", options={"delay": 0.3})
    gw = start_pool(gateway_factory, tmp_path, [{"label": "a%d" % i, "access_token": t} for i, t in enumerate(tokens)],
                    **FAST)
    result = gw.client(gw.access_key).images.generate(model="gpt-image-1", prompt="an otter", n=3,
                                                      response_format="b64_json")
    assert len(result.data) == 3
    assert len({base64.b64decode(d.b64_json) for d in result.data}) == 3
    assert_one_at_a_time(upstream, subs)
    assert not upstream.log(gw.access_key)  # the access key never reaches the upstream
    rows = admin(gw)["accounts"]
    assert [r["in_flight"] for r in rows] == [0, 0] and sum(r["served"] for r in rows) == 3


def test_client_gone_while_its_picture_is_drawn_frees_the_account_and_stops_polling(gateway_factory, upstream,
                                                                                     tmp_path):
    subs, tokens = new_accounts(1, "imgone")
    upstream.plan(subs[0], scenario="image_gen", options={"delay": 60})
    gw = start_pool(gateway_factory, tmp_path, [{"label": "a", "access_token": tokens[0]}], **FAST)
    conn = send_on_connection(gw, "draw", model="gpt-4-s")
    conn.getresponse()
    wait_until(lambda: len(polls(upstream, subs[0])) >= 2, what="the polling")
    assert admin(gw)["accounts"][0]["in_flight"] == 1  # held while the picture is drawn
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    wait_until(lambda: admin(gw)["accounts"][0]["in_flight"] == 0, what="the account given back")
    before = len(polls(upstream, subs[0]))
    time.sleep(0.5)  # five poll intervals
    assert len(polls(upstream, subs[0])) == before


def test_gpt_image_n2_with_the_clients_own_account_token_gives_two_pictures(gateway_factory, upstream, key):
    """A forwarded key is one account, and an account answers one message at a time (the fake
    refuses a second at once, as ChatGPT does): n=2 must still give two pictures."""
    upstream.plan(key, scenario="image_gen", options={"delay": 0.2}, exclusive=True, pace_ms=30)
    gw = gateway_factory(**FAST)
    result = gw.client(key).images.generate(model="gpt-image-1", prompt="an otter", n=2, response_format="b64_json")
    assert len(result.data) == 2
    posts = upstream.conversations(key)
    assert not [r for r in posts if r.get("refused") == "busy"]


def test_client_gone_from_a_pooled_gpt_image_n3_leaves_no_lease_and_no_waiter(gateway_factory, upstream, tmp_path):
    """One account, n=3 through an access key: one picture being drawn, two requests queued for
    the account. The client leaves: the account comes back and nothing stays queued or polling."""
    subs, tokens = new_accounts(1, "imgq")
    upstream.plan(subs[0], scenario="image_gen", options={"delay": 60})
    gw = start_pool(gateway_factory, tmp_path, [{"label": "a", "access_token": tokens[0]}], **FAST)
    host, port = gw.url.split("//")[1].split(":")
    conn = HTTPConnection(host, int(port), timeout=10)
    conn.request("POST", "/v1/images/generations", json.dumps({"model": "gpt-image-1", "prompt": "otter", "n": 3}),
                 {"Authorization": "Bearer " + gw.access_key, "Content-Type": "application/json"})
    wait_until(lambda: len(polls(upstream, subs[0])) >= 2 and admin(gw)["queued"] == 2, what="one drawing, two queued")
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    wait_until(lambda: admin(gw)["accounts"][0]["in_flight"] == 0 and admin(gw)["queued"] == 0,
               what="the account back, the queue empty")
    before = len(polls(upstream, subs[0]))
    time.sleep(0.5)
    assert len(polls(upstream, subs[0])) == before
    assert len(upstream.conversations(subs[0])) == 1  # the queued two never reached the upstream
