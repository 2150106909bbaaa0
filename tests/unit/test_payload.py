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
    (500, b"Internal Server Error", 502, "upstream_not_backend_api", "Internal Server Error"),
    (502, b"", 502, "upstream_not_backend_api", "an empty body"),
    (502, b'{"detail": "Bad gateway"}', 502, "upstream_error", "Bad gateway"),
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


def test_an_agents_tool_history_is_folded_into_text():
    req = parse_chat_request({"model": "m", "messages": [
        {"role": "user", "content": "北京天气？"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "北京"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
        {"role": "assistant", "content": "Let me check twice.", "function_call": {"name": "lookup", "arguments": "{}"}},
        {"role": "function", "name": "lookup", "content": "sunny"},
        {"role": "tool", "tool_call_id": "unknown", "content": [{"type": "text", "text": "?"}]},
        {"role": "user", "content": "所以呢？"},
    ]})
    assert req.messages == [
        ("user", "北京天气？"),
        ("assistant", '[called tool get_weather with {"city": "北京"}]'),
        ("user", '[result of tool get_weather]\n{"temp": 21}'),
        ("assistant", "Let me check twice.\n[called tool lookup with {}]"),
        ("user", "[result of tool lookup]\nsunny"),
        ("user", "[result of tool tool]\n?"),
        ("user", "所以呢？"),
    ]


def test_odd_tool_call_shapes_are_folded_not_refused():
    req = parse_chat_request({"model": "m", "messages": [
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't."}],
         "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": {"a": 1}}}, "junk", {}]},
        {"role": "user", "content": "ok"}]})
    assert req.messages[0] == ("assistant", 'I can\'t.\n[called tool f with {"a":1}]\n[called tool tool with {}]')


def test_openai_parameters_the_backend_cannot_honour_never_fail_a_request():
    req = parse_chat_request({"model": "m", "messages": [{"role": "developer", "content": "x"},
                                                         {"role": "user", "content": "y", "name": "bob"}],
                              "user": "u1", "logit_bias": {"50256": -100}, "stop": ["\n\n"], "logprobs": True,
                              "top_logprobs": 2, "tools": [{"type": "function", "function": {"name": "f"}}],
                              "tool_choice": "auto", "parallel_tool_calls": False, "functions": [],
                              "function_call": "none", "response_format": {"type": "json_object"},
                              "max_completion_tokens": 10, "reasoning_effort": "high", "seed": 7, "store": False,
                              "metadata": {"a": "b"}, "service_tier": "auto", "modalities": ["text"],
                              "stream_options": None, "prediction": None, "audio": None, "web_search_options": {}})
    assert req.messages == [("system", "x"), ("user", "y")]


@pytest.mark.parametrize("effort, sent", [("high", "extended"), ("xhigh", "extended"), ("low", "standard"),
                                          ("medium", "standard"), ("minimal", "standard"), ("bogus", None),
                                          (None, None)])
def test_reasoning_effort_becomes_thinking_effort_for_thinking_models(effort, sent):
    req = parse_chat_request({"model": "o3", "messages": [{"role": "user", "content": "x"}],
                              "reasoning_effort": effort.upper() if effort else effort})
    thinking = Route("o3", "o3", thinking=True)
    assert conversation_payload(req.messages, thinking, ids(), "auto", effort=req.reasoning_effort).get(
        "thinking_effort") == sent
    # not for a model that does not think, and never in the late-2023 body
    assert "thinking_effort" not in conversation_payload(req.messages, Route("gpt-4o", "gpt-4o"), ids(), "auto",
                                                         effort=req.reasoning_effort)
    assert "thinking_effort" not in conversation_payload(req.messages, thinking, ids(), "legacy",
                                                         effort=req.reasoning_effort)


def test_a_reasoning_effort_of_any_type_never_fails():
    for effort in (5, {"a": 1}, ["high"], True):
        assert parse_chat_request({"model": "o3", "messages": [{"role": "user", "content": "x"}],
                                   "reasoning_effort": effort}).reasoning_effort is None
