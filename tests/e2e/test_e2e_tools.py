"""Tool answers end to end: the openai SDK against real gateway processes and the fake upstream.

Images and files are fetched for real (backend-api download call -> download_url -> bytes),
saved and served by the gateway; the tests fetch the served URLs and compare the bytes with
what the fake upstream serves.
"""

import base64
import http.client as httplib
import json
import os
import re
import urllib.parse

import openai
import pytest

from tests.helpers import http

IMAGE_LINK = re.compile(r"!\[image\]\((\S+?)\)")
DALLE_BLOCK = '```json\n{"size": "1024x1024", "prompt": "A watercolor otter floating on calm water at sunset"}\n```\n'
DALLE_PLAIN = '{"size": "1024x1024", "prompt": "A watercolor otter floating on calm water at sunset"}\n'
URL11 = "https://www.tornadoweb.org/en/stable/releases/v6.4.0.html"
URL3 = "https://www.tornadoweb.org/en/stable/#installation"
URL7 = "https://tornado.readthedocs.io/"


def ask(client, stream, text="hi"):
    messages = [{"role": "user", "content": text}]
    if stream:
        chunks = list(client.chat.completions.create(model="gpt-4-s", messages=messages, stream=True))
        assert chunks[-1].choices[0].finish_reason == "stop"
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    done = client.chat.completions.create(model="gpt-4-s", messages=messages)
    assert done.choices[0].finish_reason == "stop"
    return done.choices[0].message.content


def upstream_bytes(upstream, file_id):
    status, _, body = http("GET", "%s/_fake/blob/file/%s" % (upstream.url, file_id))
    assert status == 200
    return body


def served(url):
    status, headers, body = http("GET", url)
    assert status == 200, body
    return headers, body


@pytest.mark.parametrize("stream", [False, True])
def test_dalle_two_images_are_saved_and_served(gateway, upstream, key, stream):
    upstream.plan(key, scenario="dalle_two", chunking="random:5")
    text = ask(gateway.client(key), stream)
    urls = IMAGE_LINK.findall(text)
    assert len(urls) == 2
    assert text == (DALLE_BLOCK + "".join("![image](%s)\n[download](%s)\n" % (u, u) for u in urls)
                    + "这是你要的图片。")
    assert urls[0].startswith(gateway.url + "/images/image_") and urls[0].endswith(".png")
    assert urls[1].endswith(".webp")
    for url, file_id, mime in zip(urls, ("file-dalle1png", "file-dalle2webp"), ("image/png", "image/webp"), strict=False):
        headers, body = served(url)
        assert body == upstream_bytes(upstream, file_id)
        assert headers["Content-Type"] == mime
        assert "max-age" in headers["Cache-Control"]
    saved = sorted(os.listdir(gateway.images_dir))
    assert [u.rsplit("/", 1)[1] in saved for u in urls] == [True, True]  # saved where IMAGES_DIR says
    paths = [r["path"] for r in upstream.log(key) if r["method"] == "GET"]
    assert paths == ["/backend-api/files/file-dalle1png/download", "/backend-api/files/file-dalle2webp/download"]


def test_download_url_is_fetched_without_authorization(gateway, upstream, key):
    upstream.plan(key, scenario="chart")
    text = ask(gateway.client(key), False)
    [url] = IMAGE_LINK.findall(text)
    assert served(url)[1] == upstream_bytes(upstream, "file-chart1png")
    blob_gets = [r for r in upstream.log("") if r["path"] == "/_fake/blob/file/file-chart1png"]
    assert blob_gets and all(r["authorization"] is None for r in blob_gets)


@pytest.mark.parametrize("stream", [False, True])
def test_browsing_with_citations(gateway, upstream, key, stream):
    upstream.plan(key, scenario="browse", chunking="random:9")
    assert ask(gateway.client(key), stream) == (
        '```\nsearch("tornado 6.4 release date")\n```\n```\nmclick([0, 3])\n```\n'
        "Tornado 6.4 发布于 2023 年 11 月[[11](%s)]。它需要 Python 3.8+ [[3](%s)] 和 pip，"
        "文档在 readthedocs[[7](%s)]。旧说法 已过时；括号【注】不是引用。" % (URL11, URL3, URL7))


def test_code_interpreter_two_rounds(gateway, upstream, key):
    upstream.plan(key, scenario="code_rounds", chunking="random:2")
    assert ask(gateway.client(key), True) == (
        "```python\nx = 6 * 7\nprint(x)\n```\nResult:\n```\n42\n```\n"
        "```python\nprint(x + 1)\n```\nResult:\n```\n43\n```\n结果是 42 和 43。")


def test_sandbox_file_is_fetched_saved_and_linked(gateway, upstream, key):
    upstream.plan(key, scenario="sandbox_file")
    text = ask(gateway.client(key), False)
    m = re.search(r"文件在这里：\[report\.csv\]\((\S+?)\)，请下载。\Z", text)
    assert m, text
    headers, body = served(m.group(1))
    assert body == b"path,rows\n/mnt/data/report.csv,2\n"
    assert headers["Content-Type"].startswith("text/csv")
    [call] = [r for r in upstream.log(key) if "interpreter/download" in r["path"]]
    query = urllib.parse.parse_qs(call["query"])
    assert query["sandbox_path"] == ["/mnt/data/report.csv"] and query["message_id"][0]


def test_failed_download_shows_a_notice(gateway, upstream, key):
    upstream.plan(key, scenario="dalle_missing")
    assert ask(gateway.client(key), True) == (
        DALLE_BLOCK + "(an image could not be fetched from the upstream)\n这是你要的图片。")


def test_bot_mode_defaults(gateway_factory, upstream, key):
    gw = gateway_factory(BOT_MODE="true")
    client = gw.client(key)
    upstream.plan(key, scenario="browse", chunking="random:4")
    assert ask(client, True) == ("Tornado 6.4 发布于 2023 年 11 月。它需要 Python 3.8+ 和 pip，"
                                 "文档在 readthedocs。旧说法 已过时；括号【注】不是引用。")
    upstream.plan(key, scenario="dalle", chunking="random:4")
    text = ask(client, False)
    [url] = IMAGE_LINK.findall(text)
    assert text == "![image](%s)\n这是你要的图片。" % url
    assert served(url)[1] == upstream_bytes(upstream, "file-dalle1png")


def test_bot_mode_everything_on_with_plain_urls(gateway_factory, upstream, key):
    gw = gateway_factory(BOT_MODE="true", BOT_MODE_ENABLED_PLUGIN_OUTPUT="true",
                         BOT_MODE_ENABLED_BING_REFERENCE_OUTPUT="true",
                         BOT_MODE_ENABLED_PLAIN_IMAGE_URL_OUTPUT="true",
                         UPLOAD_BASE_URL="https://img.example.com/gw")
    client = gw.client(key)
    upstream.plan(key, scenario="browse")
    assert ask(client, False) == (
        'search("tornado 6.4 release date")\nmclick([0, 3])\n'
        "Tornado 6.4 发布于 2023 年 11 月[11]。它需要 Python 3.8+ [3] 和 pip，文档在 readthedocs[7]。"
        "旧说法 已过时；括号【注】不是引用。\n\n"
        "[11] Tornado 6.4 released %s\n[3] Installation %s\n[7] Tornado docs %s" % (URL11, URL3, URL7))
    upstream.plan(key, scenario="dalle")
    text = ask(client, True)
    m = re.fullmatch(re.escape(DALLE_PLAIN) + r"https://img\.example\.com/gw/images/(image_\w+\.png)\n这是你要的图片。", text)
    assert m, text
    assert served(gw.url + "/images/" + m.group(1))[1] == upstream_bytes(upstream, "file-dalle1png")
    # a file the code wrote: a bare URL on its own line, and the code as plain lines
    upstream.plan(key, scenario="sandbox_file")
    text = ask(client, True)
    m = re.fullmatch(r"import pandas as pd\npd\.DataFrame\(\{'a': \[1, 2\]\}\)\.to_csv\('/mnt/data/report\.csv'\)\n"
                     r"文件在这里：report\.csv\nhttps://img\.example\.com/gw/images/(\S+\.csv)\n，请下载。", text)
    assert m, text
    assert served(gw.url + "/images/" + m.group(1))[1] == b"path,rows\n/mnt/data/report.csv,2\n"
    assert "```" not in text and "](" not in text


def test_bot_mode_images_endpoint_reply_is_plain_text(gateway_factory, upstream, key):
    """The reply of /v1/images/generations follows bot mode's rules; the images are there
    whatever the image switches say."""
    gw = gateway_factory(BOT_MODE="true", BOT_MODE_ENABLED_MARKDOWN_IMAGE_OUTPUT="false")
    result = gw.client(key).images.generate(prompt="an otter")
    assert result.model_extra["reply"] == "这是你要的图片。"  # no prompt fence, no image markdown
    assert served(result.data[0].url)[1] == upstream_bytes(upstream, "file-dalle1png")
    gw = gateway_factory(BOT_MODE="true", BOT_MODE_ENABLED_PLUGIN_OUTPUT="true",
                         BOT_MODE_ENABLED_PLAIN_IMAGE_URL_OUTPUT="true")
    result = gw.client(key).images.generate(prompt="an otter")
    assert result.model_extra["reply"] == DALLE_PLAIN + result.data[0].url + "\n这是你要的图片。"


def test_bot_mode_without_image_output_fetches_nothing(gateway_factory, upstream, key):
    gw = gateway_factory(BOT_MODE="true", BOT_MODE_ENABLED_MARKDOWN_IMAGE_OUTPUT="false")
    upstream.plan(key, scenario="dalle")
    assert ask(gw.client(key), True) == "这是你要的图片。"
    assert [r for r in upstream.log(key) if r["method"] == "GET"] == []


@pytest.mark.parametrize("path", ["/images/..%2fconf%2fconfig.json", "/images/%2e%2e%2fserver.py",
                                  "/images/../server.py", "/images//etc/passwd", "/images/%2fetc%2fpasswd",
                                  "/images/.gitkeep", "/images/", "/images/image_nothing.png"])
def test_images_outside_the_store_are_404(gateway, path):
    host = urllib.parse.urlsplit(gateway.url)
    conn = httplib.HTTPConnection(host.hostname, host.port, timeout=10)
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read()
    conn.close()
    assert response.status == 404
    assert json.loads(body)["error"]["code"] == "not_found"


# POST /v1/images/generations

def test_images_generate_urls(gateway, upstream, key):
    client = gateway.client(key)
    result = client.images.generate(prompt="an otter", n=2, size="512x512")
    assert len(result.data) == 2
    for item, file_id in zip(result.data, ("file-dalle1png", "file-dalle2webp"), strict=False):
        assert item.revised_prompt == "A watercolor otter floating on calm water at sunset"
        assert served(item.url)[1] == upstream_bytes(upstream, file_id)
    assert result.created > 0
    assert result.model_extra["reply"].endswith("这是你要的图片。")
    [conv] = upstream.conversations(key)
    assert conv["body"]["model"] == "gpt-4"  # the first model that can draw: gpt-4-s
    asked = conv["body"]["messages"][0]["content"]["parts"][0]
    assert asked.startswith("Use DALL·E to draw") and "an otter" in asked
    assert "512x512" in asked and "Number of images: 2" in asked


def test_images_generate_b64_json(gateway, upstream, key):
    result = gateway.client(key).images.generate(prompt="an otter", response_format="b64_json",
                                                 model="gpt-4-mobile")
    assert [base64.b64decode(d.b64_json) for d in result.data] == [upstream_bytes(upstream, "file-dalle1png")]
    assert upstream.conversations(key)[0]["body"]["model"] == "gpt-4-mobile"


def test_images_prompt_prefix_is_a_setting(gateway_factory, upstream, key):
    gw = gateway_factory(DALLE_PROMPT_PREFIX="/draw please: ")
    gw.client(key).images.generate(prompt="a cat")
    asked = upstream.conversations(key)[0]["body"]["messages"][0]["content"]["parts"][0]
    assert asked.startswith("/draw please: a cat")


def test_images_no_image_is_an_error_with_the_assistants_words(gateway, upstream, key):
    upstream.plan(key, scenario="no_image")
    with pytest.raises(openai.BadRequestError) as e:
        gateway.client(key).images.generate(prompt="something forbidden")
    assert "抱歉，我不能画这个。I can't draw that." in e.value.message
    assert e.value.code == "no_image_generated"


def test_images_all_downloads_failing_is_an_error(gateway, upstream, key):
    upstream.plan(key, scenario="dalle_missing")
    with pytest.raises(openai.APIStatusError) as e:
        gateway.client(key).images.generate(prompt="an otter")
    assert e.value.status_code == 502


@pytest.mark.parametrize("body, param", [
    ({"prompt": "x", "n": 5}, "n"), ({"prompt": "x", "n": 0}, "n"), ({"prompt": ""}, "prompt"), ({}, "prompt"),
    ({"prompt": "x", "response_format": "png"}, "response_format"), ({"prompt": "x", "size": "big"}, "size"),
    ({"prompt": "x", "model": "gpt-3.5-turbo"}, "model")])
def test_images_bad_requests(gateway, key, body, param):
    status, _, raw = http("POST", gateway.url + "/v1/images/generations", body,
                          {"Authorization": "Bearer " + key, "Content-Type": "application/json"})
    assert status == 400
    assert json.loads(raw)["error"]["param"] == param


@pytest.mark.parametrize("model", ["dall-e-3", "dall-e-2"])
def test_images_openai_model_names_draw_with_the_first_drawing_model(gateway, upstream, key, model):
    result = gateway.client(key).images.generate(prompt="an otter", model=model)
    assert len(result.data) == 1
    assert upstream.conversations(key)[0]["body"]["model"] == "gpt-4"


def test_images_unknown_model_is_404(gateway, key):
    with pytest.raises(openai.NotFoundError):
        gateway.client(key).images.generate(prompt="x", model="dall-e-9")


def test_saved_files_that_are_not_raster_images_are_downloads_that_cannot_run_scripts(gateway):
    """A file the code interpreter wrote can be anything a prompt asked for, e.g. an SVG with a script."""
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(document.domain)</script></svg>'
    with open(os.path.join(gateway.images_dir, "chart_20261124_abcd.svg"), "wb") as f:
        f.write(svg)
    status, headers, body = http("GET", gateway.url + "/images/chart_20261124_abcd.svg")
    assert status == 200 and body == svg
    assert headers["Content-Disposition"].startswith("attachment")
    assert "sandbox" in headers["Content-Security-Policy"]
