"""Pictures the 2025 image tool draws after the stream ended (upstream-protocol 5.5), end to end.

The fake upstream ends the SSE at the image tool's placeholder and shows the picture in
``GET conversation/{id}`` only after a delay; the gateway keeps the client's answer open, polls,
and passes the picture on through the same conversion: downloaded through the conversation's
attachment endpoint, saved, served, shown as DALL·E pictures are. Intervals are short settings.
"""

import base64
import http.client as httplib
import json
import re
import socket
import threading
import time
import urllib.parse
import uuid

import openai
import pytest

from fakeupstream import scenarios
from tests.helpers import http

IMAGE_LINK = re.compile(r"!\[image\]\((\S+?)\)")
CALL = '{"prompt": "%s", "size": "1024x1024", "n": 1}' % scenarios.IMAGE_PROMPT
PROMPT_BLOCK = "```json\n%s\n```\n" % CALL
USER = [{"role": "user", "content": "画一只水獭"}]
FAST = {"IMAGE_POLL_INTERVAL": "0.1", "KEEPALIVE_INTERVAL": "0.2"}


@pytest.fixture(scope="module")
def gw(gateway_factory):
    return gateway_factory(**FAST)


@pytest.fixture(scope="module")
def bot_gw(gateway_factory):
    return gateway_factory(BOT_MODE="true", **FAST)


@pytest.fixture(scope="module")
def bot_plain_gw(gateway_factory):
    return gateway_factory(BOT_MODE="true", BOT_MODE_ENABLED_PLAIN_IMAGE_URL_OUTPUT="true",
                           BOT_MODE_ENABLED_PLUGIN_OUTPUT="true", **FAST)


def ask(client, stream, model="gpt-4-s"):
    if stream:
        chunks = list(client.chat.completions.create(model=model, messages=USER, stream=True))
        assert chunks[-1].choices[0].finish_reason == "stop"
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    done = client.chat.completions.create(model=model, messages=USER)
    assert done.choices[0].finish_reason == "stop"
    return done.choices[0].message.content


def attachment_downloads(upstream, key):
    return [r["path"] for r in upstream.log(key) if r["method"] == "GET" and "/attachment/" in r["path"]]


def polls(upstream, key):
    return [r for r in upstream.log(key) if r["method"] == "GET" and re.search(r"/conversation/[^/]+$", r["path"])]


def fake_bytes(upstream, path):
    file_id = path.split("/attachment/")[1].split("/")[0]
    status, _, body = http("GET", "%s/_fake/blob/file/%s" % (upstream.url, file_id))
    assert status == 200
    return body


def served(url):
    status, headers, body = http("GET", url)
    assert status == 200, body
    return body


@pytest.mark.parametrize("encoding", ["v1", "legacy"])
@pytest.mark.parametrize("stream", [False, True])
def test_a_picture_drawn_after_the_stream_is_polled_saved_and_served(gw, upstream, key, stream, encoding):
    upstream.plan(key, scenario="image_gen", options={"delay": 0.6}, encoding=encoding)
    started = time.monotonic()
    text = ask(gw.client(key), stream)
    assert time.monotonic() - started >= 0.6  # the answer waited for the picture
    [url] = IMAGE_LINK.findall(text)
    assert text == PROMPT_BLOCK + "![image](%s)\n[download](%s)\n" % (url, url) + scenarios.IMAGE_DONE_TEXT
    [download] = attachment_downloads(upstream, key)
    cid = upstream.conversations(key)[0]["conversation_id"]
    assert download.startswith("/backend-api/conversation/%s/attachment/file_0000" % cid)
    assert served(url) == fake_bytes(upstream, download)
    assert polls(upstream, key)  # it was polled, through the answer's own key
    assert all(r["authorization"] == "Bearer " + key for r in polls(upstream, key))


@pytest.mark.parametrize("stream", [False, True])
def test_bot_mode_shows_only_the_picture_and_the_words(bot_gw, upstream, key, stream):
    upstream.plan(key, scenario="image_gen", options={"delay": 0.3})
    text = ask(bot_gw.client(key), stream)
    [url] = IMAGE_LINK.findall(text)
    assert text == "![image](%s)\n%s" % (url, scenarios.IMAGE_DONE_TEXT)
    assert served(url) == fake_bytes(upstream, attachment_downloads(upstream, key)[0])


@pytest.mark.parametrize("stream", [False, True])
def test_bot_mode_switches_plain_url_and_plugin_output(bot_plain_gw, upstream, key, stream):
    upstream.plan(key, scenario="image_gen", options={"delay": 0.3})
    text = ask(bot_plain_gw.client(key), stream)
    url = text.split("\n")[-2]
    assert url.startswith(bot_plain_gw.url + "/images/image_")
    assert text == CALL + "\n" + url + "\n" + scenarios.IMAGE_DONE_TEXT  # plugin output as plain text
    assert served(url) == fake_bytes(upstream, attachment_downloads(upstream, key)[0])


@pytest.mark.parametrize("stream", [False, True])
def test_a_picture_patched_into_the_stream_needs_no_poll(gw, upstream, key, stream):
    upstream.plan(key, scenario="image_gen_inline", chunking="random:11")
    text = ask(gw.client(key), stream)
    [url] = IMAGE_LINK.findall(text)
    assert text == PROMPT_BLOCK + "![image](%s)\n[download](%s)\n" % (url, url) + scenarios.IMAGE_DONE_TEXT
    assert served(url) == fake_bytes(upstream, attachment_downloads(upstream, key)[0])
    assert polls(upstream, key) == []


class RawStream:
    def __init__(self, gw, key):
        u = urllib.parse.urlsplit(gw.url)
        self.conn = httplib.HTTPConnection(u.hostname, u.port, timeout=10)
        self.conn.request("POST", "/v1/chat/completions", json.dumps(
            {"model": "gpt-4-s", "messages": USER, "stream": True}),
            {"Authorization": "Bearer " + key, "Content-Type": "application/json"})
        self.response = self.conn.getresponse()

    def read_until(self, marker, limit=2000):
        seen = b""
        for _ in range(limit):
            line = self.response.readline()
            if not line:
                break
            seen += line
            if marker in seen:
                break
        return seen


def test_the_client_gets_keepalives_while_the_picture_is_drawn(gw, upstream, key):
    upstream.plan(key, scenario="image_gen", options={"delay": 1.0})
    raw = RawStream(gw, key)
    seen = raw.read_until(b"data: [DONE]")
    prompt_at = seen.index(b"```json")
    image_at = seen.index(b"![image]")
    # keep-alives flowed between the prompt and the picture: at least a few, 0.2 s apart
    assert seen.count(b": keep-alive\n\n", prompt_at, image_at) >= 2
    assert seen.rstrip().endswith(b"data: [DONE]")


def test_polling_stops_when_the_client_leaves(gw, upstream, key):
    upstream.plan(key, scenario="image_gen", options={"delay": 60})
    raw = RawStream(gw, key)
    raw.read_until(b"```json")
    upstream.wait_log(key, lambda records: len(polls(upstream, key)) >= 2)
    raw.conn.sock.shutdown(socket.SHUT_RDWR)
    raw.conn.close()
    time.sleep(0.5)  # the gateway notices the close and stops at once
    before = len(polls(upstream, key))
    time.sleep(1.0)  # ten poll intervals
    assert len(polls(upstream, key)) == before


@pytest.fixture(scope="module")
def impatient_gw(gateway_factory):
    return gateway_factory(IMAGE_WAIT_TIMEOUT="0.5", **FAST)


def test_no_picture_in_time_is_a_504_naming_the_wait(impatient_gw, upstream, key):
    upstream.plan(key, scenario="image_gen", options={"delay": 60})
    with pytest.raises(openai.APIStatusError) as err:
        impatient_gw.client(key).chat.completions.create(model="gpt-4-s", messages=USER)
    assert err.value.status_code == 504
    body = err.value.body
    assert body["code"] == "image_timeout" and "IMAGE_WAIT_TIMEOUT" in body["message"]
    after = len(polls(upstream, key))
    time.sleep(0.5)
    assert len(polls(upstream, key)) == after  # no polling after the response ended


def test_no_picture_in_time_ends_a_stream_with_an_error_event(impatient_gw, upstream, key):
    upstream.plan(key, scenario="image_gen", options={"delay": 60})
    text = []
    with pytest.raises(openai.APIError) as err:
        for chunk in impatient_gw.client(key).chat.completions.create(model="gpt-4-s", messages=USER, stream=True):
            text.append(chunk.choices[0].delta.content or "")
    assert "IMAGE_WAIT_TIMEOUT" in err.value.message
    assert "".join(text) == PROMPT_BLOCK  # what was shown before the wait stays shown


def test_image_quota_is_a_rate_limit_with_the_upstream_words(gw, upstream, key):
    upstream.plan(key, scenario="image_quota")
    with pytest.raises(openai.RateLimitError) as err:
        gw.client(key).chat.completions.create(model="gpt-4-s", messages=USER)
    assert scenarios.IMAGE_QUOTA_TEXT in err.value.body["message"]
    with pytest.raises(openai.APIError) as err:
        list(gw.client(key).chat.completions.create(model="gpt-4-s", messages=USER, stream=True))
    assert scenarios.IMAGE_QUOTA_TEXT in err.value.message


def test_the_same_upstream_picture_is_saved_once(gw, upstream, key):
    """Two answers (same key) showing the same DALL·E file: one download, one saved copy."""
    upstream.plan(key, scenario="dalle")
    first = IMAGE_LINK.findall(ask(gw.client(key), False))
    second = IMAGE_LINK.findall(ask(gw.client(key), True))
    assert first == second and len(first) == 1
    downloads = [r for r in upstream.log(key) if r["path"].endswith("/download")]
    assert len(downloads) == 1


def test_images_generate_with_gpt_image_1_gives_the_fake_pictures_as_b64(gw, upstream, key):
    upstream.plan(key, scenario="image_gen", options={"delay": 0.3})
    result = gw.client(key).images.generate(model="gpt-image-1", prompt="an otter", n=2, size="1536x1024",
                                            response_format="b64_json")
    downloads = attachment_downloads(upstream, key)
    assert len(result.data) == 2 == len(downloads)
    got = sorted(base64.b64decode(d.b64_json) for d in result.data)
    assert got == sorted(fake_bytes(upstream, p) for p in downloads)
    assert got[0] != got[1]  # two conversations, two pictures
    assert [d.revised_prompt for d in result.data] == [scenarios.IMAGE_PROMPT] * 2
    posts = upstream.conversations(key)
    assert len(posts) == 2 and len({p["conversation_id"] for p in posts}) == 2
    for post in posts:
        assert post["body"]["system_hints"] == ["picture_v2"]
        assert post["body"]["model"] == "gpt-4o"  # IMAGE_MODEL
        assert "1536x1024" in post["body"]["messages"][0]["content"]["parts"][0]


def test_images_generate_with_gpt_image_2_answers_urls_and_the_reply(gw, upstream, key):
    upstream.plan(key, scenario="image_gen", options={"delay": 0.2})
    status, _, body = http("POST", gw.url + "/v1/images/generations",
                           {"model": "gpt-image-2", "prompt": "an otter"},
                           {"Authorization": "Bearer " + key, "Content-Type": "application/json"})
    assert status == 200, body
    answer = json.loads(body)
    [item] = answer["data"]
    assert served(item["url"]) == fake_bytes(upstream, attachment_downloads(upstream, key)[0])
    assert answer["reply"] == PROMPT_BLOCK + "![image](%s)\n[download](%s)\n%s" % (
        item["url"], item["url"], scenarios.IMAGE_DONE_TEXT)


def test_images_generate_out_of_quota_is_a_429(gw, upstream, key):
    upstream.plan(key, scenario="image_quota")
    with pytest.raises(openai.RateLimitError) as err:
        gw.client(key).images.generate(model="gpt-image-1", prompt="an otter")
    assert scenarios.IMAGE_QUOTA_TEXT in err.value.body["message"]


def test_a_refused_poll_fails_the_answer_at_once(gw, upstream, key):
    upstream.plan(key, scenario="image_gen", options={"delay": 60}, poll_status=404)
    with pytest.raises(openai.APIStatusError) as err:
        gw.client(key).chat.completions.create(model="gpt-4-s", messages=USER)
    assert err.value.status_code == 502 and err.value.body["code"] == "upstream_poll_failed"
    assert "Conversation not found" in err.value.body["message"] or "poll refused" in err.value.body["message"]
    assert len(polls(upstream, key)) == 1


def test_polls_that_fail_for_a_while_are_retried(gw, upstream, key):
    """A 5xx poll is tried again at the next interval: the picture still arrives."""
    upstream.plan(key, scenario="image_gen", options={"delay": 0.4}, poll_status=502)

    def heal():  # the plan changes while the answer waits
        upstream.wait_log(key, lambda records: len(polls(upstream, key)) >= 2)
        upstream.plan(key, scenario="image_gen", options={"delay": 0.4})
    t = threading.Thread(target=heal)
    t.start()
    text = ask(gw.client(key), False)
    t.join()
    assert len(IMAGE_LINK.findall(text)) == 1


def test_a_team_key_reaches_every_poll_and_download_with_its_account(gw, upstream):
    token, account = "fk-team-" + uuid.uuid4().hex, "acct-" + uuid.uuid4().hex
    upstream.plan(token, scenario="image_gen", options={"delay": 0.3})
    text = ask(gw.client("%s,%s" % (token, account)), True)
    assert len(IMAGE_LINK.findall(text)) == 1
    calls = [r for r in upstream.log(token) if "/backend-api/" in r["path"]]
    assert polls(upstream, token) and attachment_downloads(upstream, token)
    assert {(r["authorization"], r["account_id"]) for r in calls} == {("Bearer " + token, account)}
    assert token not in gw.log_text()


def test_a_stream_that_drops_before_its_end_is_not_followed(gw, upstream, key):
    upstream.plan(key, scenario="image_gen", options={"delay": 0.2, "dropped": True})
    with pytest.raises(openai.APIStatusError) as err:
        gw.client(key).chat.completions.create(model="gpt-4-s", messages=USER)
    assert err.value.status_code == 502 and err.value.body["code"] == "upstream_incomplete"
    assert polls(upstream, key) == []


def test_gpt_image_draws_with_the_image_tool_also_when_unknown_names_pass_through(gateway_factory, upstream, key):
    gw = gateway_factory(PASS_THROUGH_MODELS="true", **FAST)
    upstream.plan(key, scenario="image_gen", options={"delay": 0.2})
    result = gw.client(key).images.generate(model="gpt-image-1", prompt="an otter")
    assert served(result.data[0].url) == fake_bytes(upstream, attachment_downloads(upstream, key)[0])
    [post] = upstream.conversations(key)
    assert post["body"]["model"] == "gpt-4o"
