"""Request limits: counts checked before parsing, JSON depth and object count without recursion,
lone surrogates repaired without recursion, the request parsers never failing but with a 4xx."""

import sys

import pytest
import ujson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgw.converters.payload import RequestLimits, check_chat_limits, parse_chat_request, parse_image_request
from pgw.errors import ApiError
from pgw.handlers.base import _containers_over, check_depth_and_repair


def _error(fn, *args):
    with pytest.raises(ApiError) as info:
        fn(*args)
    return info.value


def _chat(messages, **more):
    return dict({"model": "gpt-3.5-turbo", "messages": messages}, **more)


def test_too_many_messages_is_a_400_naming_the_setting():
    body = _chat([{"role": "user", "content": "hi"}] * 11)
    error = _error(parse_chat_request, body, RequestLimits(messages=10))
    assert (error.status, error.code, error.param) == (400, "too_many_messages", "messages")
    assert "MAX_MESSAGES" in error.message and "11" in error.message
    assert len(parse_chat_request(body, RequestLimits(messages=11)).messages) == 11


def test_too_many_content_parts_in_one_message():
    parts = [{"type": "text", "text": "a"}] * 6
    body = _chat([{"role": "user", "content": "x"}, {"role": "user", "content": parts}])
    error = _error(parse_chat_request, body, RequestLimits(parts=5))
    assert (error.code, error.param) == ("too_many_content_parts", "messages.1.content")
    assert "MAX_CONTENT_PARTS" in error.message


def test_total_text_counts_strings_and_text_parts_of_all_messages():
    body = _chat([{"role": "system", "content": "a" * 60},
                  {"role": "user", "content": [{"type": "text", "text": "b" * 50}]}])
    error = _error(parse_chat_request, body, RequestLimits(chars=100))
    assert error.code == "prompt_too_long" and "MAX_PROMPT_CHARS" in error.message
    assert parse_chat_request(body, RequestLimits(chars=110)).messages[1] == ("user", "b" * 50)


def test_files_are_counted_over_all_messages():
    image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    body = _chat([{"role": "user", "content": [image, image]}, {"role": "user", "content": [image]}])
    error = _error(parse_chat_request, body, RequestLimits(files=2))
    assert error.code == "too_many_files" and "MAX_FILES_PER_REQUEST" in error.message
    assert sum(len(v) for v in parse_chat_request(body, RequestLimits(files=3)).files.values()) == 3


def test_a_million_messages_are_refused_by_counting_only():
    body = _chat([{"role": "user", "content": "hi"}] * 1_000_000)
    error = _error(check_chat_limits, body, RequestLimits())
    assert error.code == "too_many_messages"


def test_image_prompt_length_is_limited():
    error = _error(parse_image_request, {"prompt": "a" * 11}, "dalle", RequestLimits(chars=10))
    assert (error.code, error.param) == ("prompt_too_long", "prompt")
    assert parse_image_request({"prompt": "a" * 10}, "dalle", RequestLimits(chars=10)).prompt == "a" * 10


def test_depth_is_checked_without_recursion_far_beyond_the_recursion_limit():
    deep = [0]
    for _ in range(sys.getrecursionlimit() * 3):
        deep = [deep]
    error = _error(check_depth_and_repair, deep, 64, True)
    assert error.code == "json_too_deep" and "MAX_JSON_DEPTH" in error.message
    ok = ujson.loads("[" * 64 + "]" * 64)
    assert check_depth_and_repair(ok, 64, True) == ok
    assert _error(check_depth_and_repair, ujson.loads("[" * 65 + "]" * 65), 64, False).code == "json_too_deep"


def test_lone_surrogates_are_replaced_everywhere_even_deep_down():
    body = ujson.loads(r'{"a\ud800": ["x\udc00y", {"k": "\ud83d"}], "ok": "\ud83d\ude00", "n": 1}')
    fixed = check_depth_and_repair(body, 64, True)
    assert fixed == {"a\ufffd": ["x\ufffdy", {"k": "\ufffd"}], "ok": "\U0001f600", "n": 1}
    ujson.dumps(fixed).encode("utf-8")  # encodable now
    deep = "\ud800"
    for _ in range(2000):
        deep = [deep]
    repaired = check_depth_and_repair(deep, 5000, True)
    for _ in range(2000):
        repaired = repaired[0]
    assert repaired == "\ufffd"


def test_container_count_ignores_brackets_inside_strings():
    text = ujson.dumps({"messages": [{"role": "user", "content": "{[" * 1000}]}).encode()
    assert not _containers_over(text, 10)  # 3 real containers, 2,000 brackets in a string
    many = ujson.dumps([{}] * 11).encode()
    assert _containers_over(many, 10) and not _containers_over(many, 12)
    escaped = b'["\\"{{{{", {}, {}]'
    assert not _containers_over(escaped, 3) and _containers_over(escaped, 2)


# Any JSON value: what a client may send after the body decoded.
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30)
ROLE = st.sampled_from(["user", "system", "assistant", "developer", "tool", "function", "", None, 3]) | JSON
PART = st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", "file", "input_audio", None])},
                             optional={"text": JSON, "image_url": JSON | st.fixed_dictionaries({"url": JSON}),
                                       "file": JSON})
MESSAGE = st.fixed_dictionaries({"role": ROLE}, optional={
    "content": JSON | st.text() | st.lists(PART | JSON, max_size=4), "name": JSON})
CHAT = st.fixed_dictionaries({}, optional={
    "model": JSON | st.sampled_from(["gpt-4", "gpt-3.5-turbo"]), "messages": JSON | st.lists(MESSAGE | JSON, max_size=5),
    "stream": JSON, "stream_options": JSON | st.fixed_dictionaries({}, optional={"include_usage": JSON}),
    "n": JSON, "tools": JSON, "temperature": JSON})
# Bodies that get past the first checks, so the per-message ones meet odd values too.
CHAT_VALIDISH = st.fixed_dictionaries(
    {"model": st.sampled_from(["gpt-4", "gpt-3.5-turbo"]), "messages": st.lists(MESSAGE, min_size=1, max_size=4)},
    optional={"stream": st.booleans() | JSON, "n": st.just(1) | JSON, "stream_options": JSON})
IMAGE = st.fixed_dictionaries({}, optional={
    "prompt": JSON, "model": JSON, "n": JSON, "size": JSON | st.sampled_from(["1024x1024", "1x1"]),
    "response_format": JSON | st.sampled_from(["url", "b64_json"])})


def _parses_or_4xx(fn, *args):
    try:
        fn(*args)
    except ApiError as e:
        assert 400 <= e.status < 500, e.body()
        ujson.dumps(e.body()).encode("utf-8")  # the error can be sent


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(CHAT_VALIDISH | CHAT | JSON)
def test_any_chat_body_parses_or_gives_a_4xx(body):
    _parses_or_4xx(parse_chat_request, body, RequestLimits(messages=3, parts=3, chars=50, files=2))
    _parses_or_4xx(parse_chat_request, body)


@settings(max_examples=300, deadline=None)
@given(IMAGE | JSON)
def test_any_image_body_parses_or_gives_a_4xx(body):
    _parses_or_4xx(parse_image_request, body, "dall-e-3", RequestLimits(chars=30))


def test_trusted_proxies_take_addresses_and_networks_only():
    from pgw.conf import settings as conf_settings
    from pgw.listener import TrustedProxies
    s = conf_settings.load(environ={"TRUSTED_PROXIES": "127.0.0.1, 10.9.0.0/16,::1"})
    trusted = TrustedProxies(s.trusted_proxies)
    assert trusted.trusts("127.0.0.1") and trusted.trusts("10.9.3.4") and trusted.trusts("::1")
    assert trusted.trusts("::ffff:10.9.0.1") and not trusted.trusts("10.8.0.1") and not trusted.trusts("")
    assert not TrustedProxies(()).trusts("127.0.0.1")
    with pytest.raises(conf_settings.SettingsError, match="TRUSTED_PROXIES"):
        conf_settings.load(environ={"TRUSTED_PROXIES": "proxy.lan"})


def test_log_lines_never_hold_a_remembered_or_key_shaped_secret():
    import logging

    from pgw import logs
    opaque = "Zq9" + "x1y2" * 10
    logs.remember(opaque + ",acct-123456789")
    record = logging.LogRecord("t", logging.WARNING, __file__, 1, "upstream said %s; fk-%s; %s", (
        "bad token " + opaque, "abcdefghijkl0123", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig"), None)
    assert logs.KeyRedactor().filter(record)
    line = record.getMessage()
    assert opaque not in line and "abcdefghijkl0123" not in line and "eyJzdWIiOiIxIn0" not in line
    assert "acct-123456789" not in line
    assert logs.mask(opaque) in line
    try:
        raise ValueError("header was Bearer " + opaque)
    except ValueError:
        import sys
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    logs.KeyRedactor().filter(record)
    assert opaque not in record.exc_text and "ValueError" in record.exc_text


def test_remembered_keys_are_masked_inside_urls_sentences_and_with_odd_characters():
    from pgw import logs
    plain, odd = "Zq9plain" + "k" * 20, "Zq9+odd/" + "k" * 20 + "=="
    logs.remember(plain)
    logs.remember(odd)
    line = logs.redact("GET /x?api_key=%s&y=1 said (%s). then %s, and %s" % (plain, plain, plain + ".", odd))
    assert plain not in line and odd not in line and line.count("…") == 4
    assert logs.redact("nothing secret here at all") == "nothing secret here at all"
