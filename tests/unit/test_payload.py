"""OpenAI requests become upstream payloads; bad requests get precise messages."""

import itertools

import pytest

from pgw.conf.models import Route
from pgw.converters.payload import conversation_payload, parse_chat_request
from pgw.errors import ApiError, from_upstream


def ids():
    counter = itertools.count(1)
    return lambda: "id-%d" % next(counter)


def test_whole_message_list_goes_upstream_with_roles_and_joined_text_parts():
    req = parse_chat_request({"model": "gpt-4-s", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "第一段"}, {"type": "text", "text": "second"}]},
        {"role": "assistant", "content": "好的"},
        {"role": "user", "content": "继续"},
    ]})
    payload = conversation_payload(req.messages, Route("gpt-4-s", "gpt-4"), ids())
    assert payload["model"] == "gpt-4"
    assert payload["action"] == "next"
    assert payload["parent_message_id"] == "id-5"
    assert payload["conversation_mode"] == {"kind": "primary_assistant"}
    assert [(m["id"], m["author"]["role"], m["content"]) for m in payload["messages"]] == [
        ("id-1", "system", {"content_type": "text", "parts": ["Be brief."]}),
        ("id-2", "user", {"content_type": "text", "parts": ["第一段\nsecond"]}),
        ("id-3", "assistant", {"content_type": "text", "parts": ["好的"]}),
        ("id-4", "user", {"content_type": "text", "parts": ["继续"]}),
    ]


def test_sampling_parameters_are_accepted_though_the_web_backend_has_none():
    req = parse_chat_request({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 1,
                              "temperature": 0.5, "top_p": 1, "max_tokens": 100, "presence_penalty": 0,
                              "frequency_penalty": 0, "user": "u1", "tools": [], "seed": 1})
    assert req.messages == [("user", "x")]


def test_stream_flags():
    req = parse_chat_request({"model": "m", "messages": [{"role": "user", "content": "x"}],
                              "stream": True, "stream_options": {"include_usage": True}})
    assert req.stream and req.include_usage
    req = parse_chat_request({"model": "m", "messages": [{"role": "user", "content": "x"}],
                              "stream_options": {"include_usage": True}})
    assert not req.stream and not req.include_usage


@pytest.mark.parametrize("body, param, words", [
    ([], None, "JSON object"),
    ({"messages": [{"role": "user", "content": "x"}]}, "model", "'model' is required"),
    ({"model": 5, "messages": [{"role": "user", "content": "x"}]}, "model", "must be a string"),
    ({"model": "m"}, "messages", "'messages' is required"),
    ({"model": "m", "messages": []}, "messages", "non-empty"),
    ({"model": "m", "messages": "hi"}, "messages", "non-empty list"),
    ({"model": "m", "messages": ["hi"]}, "messages.0", "must be an object"),
    ({"model": "m", "messages": [{"role": "robot", "content": "x"}]}, "messages.0.role", "robot"),
    ({"model": "m", "messages": [{"role": "user", "content": 5}]}, "messages.0.content", "string or a list"),
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]},
     "messages.0.content.0", "text must be a string"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "stream", "true or false"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 3}, "n", "one answer"),
])
def test_bad_requests_say_what_is_wrong(body, param, words):
    with pytest.raises(ApiError) as e:
        parse_chat_request(body)
    assert e.value.status == 400
    assert e.value.param == param
    assert words in e.value.message


@pytest.mark.parametrize("status, body, ours, code, words", [
    (401, b'{"detail": "Unauthorized"}', 401, "invalid_api_key", "Unauthorized"),
    (403, b'<html><div class="cf-please-wait">', 403, "cloudflare_challenge", "Cloudflare"),
    (404, b'{"detail": "Conversation not found"}', 404, "not_found", "Conversation not found"),
    (413, b'{"detail": {"message": "The message you submitted was too long"}}', 413, "message_too_long", "too long"),
    (429, b'{"detail": {"code": "model_cap_exceeded", "message": "You\'ve reached the current usage cap"}}',
     429, "model_cap_exceeded", "usage cap"),
    (429, b'{"detail": "Only one message at a time."}', 429, "rate_limit_exceeded", "Only one message"),
    (500, b"Internal Server Error", 502, "upstream_error", "Internal Server Error"),
    (502, b"", 502, "upstream_error", "no details"),
])
def test_upstream_errors_map_to_openai_errors(status, body, ours, code, words):
    error = from_upstream(status, body)
    assert (error.status, error.code) == (ours, code)
    assert words in error.message
    assert set(error.body()["error"]) == {"message", "type", "param", "code"}


LATE_2023_FIELDS = {"action", "messages", "parent_message_id", "model", "timezone_offset_min",
                    "history_and_training_disabled", "conversation_mode", "force_paragen", "force_rate_limit"}


def test_legacy_sends_exactly_the_late_2023_body():
    payload = conversation_payload([("user", "hi")], Route("gpt-4-s", "gpt-4"), ids(), "legacy",
                                   hints=("picture_v2",))
    assert set(payload) == LATE_2023_FIELDS
    assert payload["parent_message_id"] == "id-2"


def test_auto_adds_the_2025_fields_but_keeps_a_uuid_parent():
    payload = conversation_payload([("user", "hi")], Route("gpt-5.2", "gpt-5-2"), ids(), "auto")
    assert set(payload) - LATE_2023_FIELDS == {"supported_encodings", "supports_buffering",
                                               "paragen_cot_summary_display_override"}
    assert payload["supported_encodings"] == ["v1"] and payload["supports_buffering"] is True
    assert payload["paragen_cot_summary_display_override"] == "allow"
    assert payload["parent_message_id"] == "id-2"
    assert payload["model"] == "gpt-5-2"


def test_v1_starts_a_new_conversation_at_the_client_created_root():
    payload = conversation_payload([("user", "hi")], Route("o3", "o3"), ids(), "v1", hints=("picture_v2",))
    assert payload["parent_message_id"] == "client-created-root"
    assert payload["system_hints"] == ["picture_v2"]
    assert payload["supports_buffering"] is True


def test_system_hints_only_when_asked():
    assert "system_hints" not in conversation_payload([("user", "hi")], Route("o3", "o3"), ids(), "v1")
    assert conversation_payload([("user", "draw")], Route("o3", "o3"), ids(), "auto",
                                hints=("picture_v2",))["system_hints"] == ["picture_v2"]
