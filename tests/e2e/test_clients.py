"""The clients people run, against the running gateway with the demo upstream behind it.

Each real client, pinned, in its own environment (set up by ``tests/clients/setup.sh``, which
``.ci/run`` runs): openai-python 0.27.8 (chatgpt-on-wechat's pin), LangChain's ``ChatOpenAI``,
the Node ``openai`` package, the newest openai-python (this project's .venv, sync and async) and
the README's curl commands, run as written. Every client sends the same conversation set
(tests/clients/cases.json): Chinese and English text, a tool answer, an image answer, a
multi-turn history, an agent's tool-call history and an upstream 429. The expectations come from
the demo upstream's scripts (what it was told to answer) and from what the upstream recorded,
never from the gateway's own code. A missing client environment fails, naming the command that
sets it up: nothing here is skipped.
"""

import asyncio
import base64
import json
import os
import re
import shlex
import subprocess
import uuid

import openai
import pytest

from fakeupstream.scenarios import HELLO
from tests.helpers import ROOT, http

CLIENTS_DIR = os.path.join(ROOT, "tests", "clients")
ENVS = os.path.join(ROOT, ".clients")
with open(os.path.join(CLIENTS_DIR, "cases.json"), encoding="utf-8") as _f:
    SPEC = json.load(_f)
CASES = SPEC["cases"]
MODEL = SPEC["model"]
SETUP_HINT = "run tests/clients/setup.sh (.ci/run does) to install the pinned client environments under .clients/"
# What the demo upstream answers for the code case, and the 429 it gives (fakeupstream/app.py)
PI = "3.141592653589793"
CAP = "usage cap"
PNG, WEBP = b"\x89PNG", b"RIFF"

# client -> (program, driver, where the program runs)
DRIVERS = {
    "openai027": ([os.path.join(ENVS, "openai027", "bin", "python")], "drive_openai027.py"),
    "langchain": ([os.path.join(ENVS, "langchain", "bin", "python")], "drive_langchain.py"),
    "node": (["node"], "drive_node.mjs"),
}
MODES = {"openai027": ("plain", "stream"), "langchain": ("plain", "stream"), "node": ("plain", "stream"),
         "newest": ("plain", "stream", "async", "async_stream")}


def check_environment(client):
    if client == "node":
        modules = os.path.join(ENVS, "node", "node_modules", "openai", "package.json")
        if not os.path.exists(modules):
            pytest.fail("the Node openai client is not installed: " + SETUP_HINT)
        with open(os.path.join(CLIENTS_DIR, "package.json")) as f:
            pinned = json.load(f)["dependencies"]["openai"]
        with open(modules) as f:
            assert json.load(f)["version"] == pinned, "the Node openai client is not the pinned one: " + SETUP_HINT
    elif not os.path.exists(DRIVERS[client][0][0]):
        pytest.fail("the %s client environment is missing: %s" % (client, SETUP_HINT))


# --- the newest openai-python, in this process --------------------------------------------------

def _error(e):
    return {"error_type": type(e).__name__, "error_message": getattr(e, "message", str(e)),
            "status": getattr(e, "status_code", None)}


def _plain(r):
    return {"content": r.choices[0].message.content, "finish_reason": r.choices[0].finish_reason,
            "completion_tokens": r.usage.completion_tokens, "model": r.model}


def _joined(chunks):
    content, finish, usage = "", None, None
    for chunk in chunks:
        if chunk.choices:
            content += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage.completion_tokens
    return {"content": content, "finish_reason": finish, "completion_tokens": usage}


async def _async_case(base, key, messages):
    client = openai.AsyncOpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=20)
    out = {}
    try:
        out["async"] = _plain(await client.chat.completions.create(model=MODEL, messages=messages))
    except openai.OpenAIError as e:
        out["async"] = _error(e)
    try:
        stream = await client.chat.completions.create(model=MODEL, messages=messages, stream=True,
                                                      stream_options={"include_usage": True})
        out["async_stream"] = _joined([c async for c in stream])
    except openai.OpenAIError as e:
        out["async_stream"] = _error(e)
    await client.close()
    return out


def drive_newest(base, prefix):
    out = {}
    for case, messages in CASES.items():
        key = "%s-%s" % (prefix, case)
        client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=20)
        try:
            out[case + "/plain"] = _plain(client.chat.completions.create(model=MODEL, messages=messages))
        except openai.OpenAIError as e:
            out[case + "/plain"] = _error(e)
        try:
            out[case + "/stream"] = _joined(client.chat.completions.create(
                model=MODEL, messages=messages, stream=True, stream_options={"include_usage": True}))
        except openai.OpenAIError as e:
            out[case + "/stream"] = _error(e)
        for mode, result in asyncio.run(_async_case(base, key, messages)).items():
            out[case + "/" + mode] = result
    images = openai.OpenAI(base_url=base + "/v1", api_key=prefix + "-images", max_retries=0, timeout=30)
    calls = {
        "images/url": lambda: {"urls": [d.url for d in images.images.generate(prompt=SPEC["image_prompt"]).data]},
        "images/b64": lambda: {"b64": [d.b64_json for d in images.images.generate(
            prompt=SPEC["image_prompt"], model="dall-e-3", response_format="b64_json").data]},
        "models": lambda: {"ids": [m.id for m in images.models.list()]},
    }
    for name, call in calls.items():
        try:
            out[name] = call()
        except openai.OpenAIError as e:
            out[name] = _error(e)
    try:
        images.chat.completions.create(model="gpt-5.2-thinkin", messages=CASES["en"])
    except openai.OpenAIError as e:
        out["unknown_model"] = _error(e)
    try:  # the upstream refuses this key (planned 401): a wrong or expired token
        openai.OpenAI(base_url=base + "/v1", api_key=prefix + "-unauthorized", max_retries=0).chat.completions.create(
            model=MODEL, messages=CASES["en"])
    except openai.OpenAIError as e:
        out["unauthorized"] = _error(e)
    return out


# --- running every client once, all at the same time ----------------------------------------------

@pytest.fixture(scope="module")
def suite(gateway_factory, upstream):
    gw = gateway_factory()
    prefixes = {client: "fk-client-%s-%s" % (client, uuid.uuid4().hex[:12]) for client in MODES}
    for prefix in prefixes.values():
        upstream.plan(prefix + "-rate_limit", status=429)
    upstream.plan(prefixes["newest"] + "-unauthorized", status=401)
    missing = []
    procs = {}
    for client, (program, driver) in DRIVERS.items():
        try:
            check_environment(client)
        except BaseException as e:  # pytest.fail: reported per test below, never skipped
            missing.append((client, str(e)))
            continue
        env = dict(os.environ, CLIENT_NODE_MODULES=os.path.join(ENVS, "node", "node_modules"))
        procs[client] = subprocess.Popen(program + [os.path.join(CLIENTS_DIR, driver), gw.url, prefixes[client]],
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                         cwd=os.path.join(ENVS, "node") if client == "node" else ROOT)
    results = {"newest": drive_newest(gw.url, prefixes["newest"])}
    for client, proc in procs.items():
        try:
            stdout, stderr = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        lines = stdout.decode("utf-8", "replace").strip().splitlines()
        results[client] = (json.loads(lines[-1]) if proc.returncode == 0 and lines else
                           "driver failed (exit %s): %s" % (proc.returncode, stderr.decode("utf-8", "replace")[-3000:]))
    for client, why in missing:
        results[client] = why
    return gw, prefixes, results


def result(suite, client, name):
    results = suite[2][client]
    if isinstance(results, str):
        pytest.fail("%s: %s" % (client, results))
    assert name in results, "%s did not report %s: %s" % (client, name, sorted(results))
    got = results[name]
    assert "error_type" not in got or name.startswith("rate_limit"), "%s %s failed: %s" % (client, name, got)
    return got


def answers(suite, client, case):
    return [(mode, result(suite, client, "%s/%s" % (case, mode))) for mode in MODES[client]]


def hello(messages):
    return HELLO + "you said “%s”." % messages[-1]["content"]


ALL = list(MODES)


# The modes in which each client reports a finish reason and a usage count: non-stream answers
# always; streams where the client asks for include_usage (Node, the newest SDK). LangChain's
# stream reports neither.
FINISH = {"openai027": ("plain", "stream"), "langchain": ("plain",), "node": MODES["node"], "newest": MODES["newest"]}
USAGE = {"openai027": ("plain",), "langchain": ("plain",), "node": MODES["node"], "newest": MODES["newest"]}


@pytest.mark.parametrize("client", ALL)
@pytest.mark.parametrize("case", ["zh", "en"])
def test_text_answers_arrive_whole_stream_and_not(suite, client, case):
    for mode, got in answers(suite, client, case):
        assert got["content"] == hello(CASES[case]), (mode, got)
        if mode in FINISH[client]:
            assert got["finish_reason"] == "stop", (mode, got)
        if mode in USAGE[client]:
            assert got["completion_tokens"] > 0, (mode, got)  # chatgpt-on-wechat counts usage


@pytest.mark.parametrize("client", ALL)
def test_a_tool_answer_shows_the_code_and_its_result(suite, client):
    for mode, got in answers(suite, client, "tool"):
        assert "print(math.pi)" in got["content"] and PI in got["content"], (mode, got)


def _fetch_image(url):
    status, headers, body = http("GET", url)
    assert status == 200 and body[:4] in (PNG, WEBP), (url, status, body[:40])


@pytest.mark.parametrize("client", ALL)
def test_an_image_answer_links_an_image_the_gateway_serves(suite, client):
    gw = suite[0]
    for mode, got in answers(suite, client, "image"):
        urls = re.findall(r"!\[[^\]]*\]\((http[^)\s]+)\)", got["content"])
        assert urls and all(u.startswith(gw.url + "/images/") for u in urls), (mode, got)
        _fetch_image(urls[0])


def test_a_base_url_with_a_trailing_slash_works_for_openai_0_27(suite):
    assert result(suite, "openai027", "slash/plain")["content"] == hello(CASES["en"])


@pytest.mark.parametrize("client", ["openai027", "node", "newest"])
def test_the_images_endpoint_answers_with_a_link(suite, client):
    [url] = result(suite, client, "images/url")["urls"]
    assert url.startswith(suite[0].url + "/images/")
    _fetch_image(url)


def test_the_newest_sdk_gets_b64_images_models_and_the_right_error_classes(suite):
    [b64] = result(suite, "newest", "images/b64")["b64"]
    assert base64.b64decode(b64)[:4] in (PNG, WEBP)
    ids = result(suite, "newest", "models")["ids"]
    assert {"gpt-4o", "gpt-5.2", "o3", "gpt-4-s"} <= set(ids)
    unknown = suite[2]["newest"]["unknown_model"]
    assert unknown["error_type"] == "NotFoundError" and "gpt-5.2-thinking" in unknown["error_message"]
    assert suite[2]["newest"]["unauthorized"]["error_type"] == "AuthenticationError"


@pytest.mark.parametrize("client", ALL)
def test_a_multi_turn_history_reaches_the_upstream_whole(suite, upstream, client):
    for mode, got in answers(suite, client, "history"):
        assert got["content"] == hello(CASES["history"]), (mode, got)
    convs = upstream.conversations("%s-history" % suite[1][client])
    assert len(convs) == len(MODES[client])
    want = [(m["role"], m["content"]) for m in CASES["history"]]
    for conv in convs:
        assert [(m["author"]["role"], m["content"]["parts"][0]) for m in conv["body"]["messages"]] == want


@pytest.mark.parametrize("client", ALL)
def test_an_agents_tool_history_is_folded_into_text_not_refused(suite, upstream, client):
    for mode, got in answers(suite, client, "agent"):
        assert got["content"] == hello(CASES["agent"]), (mode, got)
    for conv in upstream.conversations("%s-agent" % suite[1][client]):
        sent = [(m["author"]["role"], m["content"]["parts"][0]) for m in conv["body"]["messages"]]
        assert [role for role, _ in sent] == ["user", "assistant", "user", "user"]
        assert sent[1][1].startswith("[called tool get_weather with {")  # LangChain re-encodes the arguments
        assert sent[2][1] == "[result of tool get_weather]\n" + CASES["agent"][2]["content"]


@pytest.mark.parametrize("client", ALL)
def test_an_upstream_429_is_the_clients_rate_limit_error(suite, client):
    for mode, got in answers(suite, client, "rate_limit"):
        # LangChain 1.x raises its OpenAIRateLimitError, a subclass of openai's RateLimitError
        classes = got.get("error_classes") or [got.get("error_type")]
        assert "RateLimitError" in classes, (mode, got)
        assert CAP in got["error_message"] and got["status"] == 429, (mode, got)


# --- the README's curl commands, as written -------------------------------------------------------

def readme_curls():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    commands = []
    for block in re.findall(r"```(?:sh|bash)\n(.*?)```", text, re.S):
        for command in re.split(r"\n(?=\S)", block.replace("\\\n", " \\\n")):
            if command.lstrip().startswith("curl "):
                commands.append(command.strip())
    return commands


def test_the_readme_has_curl_commands_to_run():
    commands = readme_curls()
    assert len(commands) >= 3, commands
    assert any("/v1/chat/completions" in c for c in commands) and any("/v1/models" in c for c in commands)


@pytest.mark.parametrize("index", range(len(readme_curls())))
def test_a_readme_curl_command_works_as_written(suite, upstream, index):
    """Only the address (``http://127.0.0.1:33333``) and the ``<key>`` placeholders are replaced."""
    gw = suite[0]
    command = readme_curls()[index]
    key = "fk-readme-%s" % uuid.uuid4().hex
    runnable = re.sub(r"<[^<>]*(?:key|token|fk)[^<>]*>", key, command.replace("http://127.0.0.1:33333", gw.url))
    proc = subprocess.run(["bash", "-c", runnable], capture_output=True, timeout=60)
    out = proc.stdout.decode("utf-8", "replace")
    assert proc.returncode == 0, (command, proc.stderr)
    assert '"error"' not in out[:200], (command, out[:500])
    if '"stream": true' in command:
        assert out.rstrip().endswith("data: [DONE]"), (command, out[-300:])
    elif "/v1/" in command:
        json.loads(out)
    if "Bearer" in command and "/chat/" in command:
        assert upstream.conversations(key), command
    assert shlex.split(runnable)[0] == "curl"
