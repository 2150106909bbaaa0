"""Pictures and documents sent the way the OpenAI vision API takes them, end to end.

The openai SDK talks to a real gateway; the fake upstream records the upload calls and the
conversation payload, which the tests compare with what the web client would have sent.
"""

import base64
import hashlib
import io

import openai
import pytest
from PIL import Image

PDF_SIZE = 601  # fakeupstream/static/sample.pdf


@pytest.fixture(scope="module")
def files_gateway(gateway_factory):
    """A gateway allowed to fetch from 127.0.0.1 (the fake upstream's host), with a small size limit."""
    return gateway_factory(FILE_FETCH_ALLOW="127.0.0.1,localhost", FILE_MAX_BYTES=4096)


def image(fmt, size):
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 120, 200)).save(buf, fmt)
    return buf.getvalue()


def data_url(mime, data):
    return "data:%s;base64,%s" % (mime, base64.b64encode(data).decode())


def ask(client, parts, model="gpt-4-s", history=()):
    return client.chat.completions.create(model=model, messages=list(history) + [{"role": "user", "content": parts}])


def uploads(records):
    """The upload calls in order, as (method, path tail, what matters) triples."""
    out = []
    for r in records:
        if r["method"] == "PUT":
            out.append(("PUT", {"authorization": r["authorization"], "x-ms-blob-type": r["x-ms-blob-type"],
                                "content-type": r["content-type"], "size": r["size"], "sha256": r["sha256"]}))
        elif "/backend-api/files" in r["path"]:
            out.append((r["method"], r["path"].split("/backend-api/", 1)[1], r["body"]))
    return out


def conversation_message(upstream, key, index=-1):
    convs = upstream.conversations(key)
    assert len(convs) == 1
    return convs[0]["body"]["messages"][index]


def file_ids(records):
    return [r["path"].split("/")[-2] for r in records if r["method"] == "POST" and r["path"].endswith("/uploaded")]


def test_png_and_jpeg_data_urls_become_image_pointers(files_gateway, upstream, key):
    png, jpeg = image("PNG", (37, 23)), image("JPEG", (40, 30))
    answer = ask(files_gateway.client(key), [
        {"type": "text", "text": "what is in these pictures?"},
        {"type": "image_url", "image_url": {"url": data_url("image/png", png)}},
        {"type": "image_url", "image_url": {"url": data_url("image/jpeg", jpeg)}},
    ])
    assert answer.choices[0].finish_reason == "stop"

    records = upstream.log(key)
    png_sha, jpeg_sha = hashlib.sha256(png).hexdigest(), hashlib.sha256(jpeg).hexdigest()
    png_id, jpeg_id = file_ids(records)
    assert uploads(records) == [
        ("POST", "files", {"file_name": png_sha + ".png", "file_size": len(png), "use_case": "multimodal"}),
        ("PUT", {"authorization": None, "x-ms-blob-type": "BlockBlob", "content-type": "image/png",
                 "size": len(png), "sha256": png_sha}),
        ("POST", "files/%s/uploaded" % png_id, {}),
        ("POST", "files", {"file_name": jpeg_sha + ".jpg", "file_size": len(jpeg), "use_case": "multimodal"}),
        ("PUT", {"authorization": None, "x-ms-blob-type": "BlockBlob", "content-type": "image/jpeg",
                 "size": len(jpeg), "sha256": jpeg_sha}),
        ("POST", "files/%s/uploaded" % jpeg_id, {}),
    ]
    message = conversation_message(upstream, key)
    assert message["author"] == {"role": "user"}
    assert message["content"] == {"content_type": "multimodal_text", "parts": [
        {"asset_pointer": "file-service://" + png_id, "size_bytes": len(png), "width": 37, "height": 23},
        {"asset_pointer": "file-service://" + jpeg_id, "size_bytes": len(jpeg), "width": 40, "height": 30},
        "what is in these pictures?"]}
    assert message["metadata"] == {"attachments": [
        {"id": png_id, "name": png_sha + ".png", "mimeType": "image/png", "size": len(png), "width": 37, "height": 23},
        {"id": jpeg_id, "name": jpeg_sha + ".jpg", "mimeType": "image/jpeg", "size": len(jpeg),
         "width": 40, "height": 30},
    ]}
    # the conversation was posted after every upload had finished
    kinds = [r["path"].rsplit("/", 1)[1] for r in records if r["method"] in ("POST", "PUT")]
    assert kinds[-1] == "conversation" and kinds.count("conversation") == 1


def test_the_same_picture_twice_is_uploaded_once(files_gateway, upstream, key):
    png = image("PNG", (37, 23))
    url = data_url("image/png", png)
    ask(files_gateway.client(key), [{"type": "text", "text": "and now?"}, {"type": "image_url", "image_url": {"url": url}}],
        history=[{"role": "user", "content": [{"type": "text", "text": "look"},
                                              {"type": "image_url", "image_url": {"url": url}}]},
                 {"role": "assistant", "content": "a blue rectangle"}])
    records = upstream.log(key)
    assert [u[0] for u in uploads(records)] == ["POST", "PUT", "POST"]
    (file_id,) = file_ids(records)
    messages = upstream.conversations(key)[0]["body"]["messages"]
    pointer = {"asset_pointer": "file-service://" + file_id, "size_bytes": len(png), "width": 37, "height": 23}
    assert messages[0]["content"]["parts"] == [pointer, "look"]
    assert messages[1]["content"] == {"content_type": "text", "parts": ["a blue rectangle"]}
    assert messages[2]["content"]["parts"] == [pointer, "and now?"]


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_pdf_by_url_goes_up_as_an_attachment_only(files_gateway, upstream, key, host):
    url = upstream.url.replace("127.0.0.1", host) + "/_fake/static/sample.pdf"
    ask(files_gateway.client(key), [{"type": "text", "text": "这个pdf里写了什么"},
                                    {"type": "image_url", "image_url": {"url": url}}])
    records = upstream.log(key)
    (file_id,) = file_ids(records)
    with open("fakeupstream/static/sample.pdf", "rb") as f:
        pdf_sha = hashlib.sha256(f.read()).hexdigest()
    assert uploads(records) == [
        ("POST", "files", {"file_name": "sample.pdf", "file_size": PDF_SIZE, "use_case": "my_files"}),
        ("PUT", {"authorization": None, "x-ms-blob-type": "BlockBlob", "content-type": "application/pdf",
                 "size": PDF_SIZE, "sha256": pdf_sha}),
        ("POST", "files/%s/uploaded" % file_id, {}),
    ]
    message = conversation_message(upstream, key)
    assert message["content"] == {"content_type": "multimodal_text", "parts": ["这个pdf里写了什么"]}
    assert message["metadata"] == {"attachments": [
        {"id": file_id, "name": "sample.pdf", "mimeType": "application/pdf", "size": PDF_SIZE}]}


def test_file_part_with_file_data_and_name(files_gateway, upstream, key):
    ask(files_gateway.client(key), [
        {"type": "file", "file": {"file_data": data_url("text/markdown", "# 标题\n正文\n".encode()), "filename": "notes.md"}},
        {"type": "text", "text": "summarise"}])
    message = conversation_message(upstream, key)
    (file_id,) = file_ids(upstream.log(key))
    assert message["metadata"]["attachments"] == [
        {"id": file_id, "name": "notes.md", "mimeType": "text/markdown", "size": len("# 标题\n正文\n".encode())}]


def refused(client, parts, model="gpt-4-s"):
    with pytest.raises(openai.BadRequestError) as e:
        ask(client, parts, model)
    return e.value.body


def test_loopback_url_is_refused_by_default(gateway, upstream, key):
    body = refused(gateway.client(key), [{"type": "text", "text": "read it"}, {"type": "image_url", "image_url": {
        "url": upstream.url + "/_fake/static/sample.pdf"}}])
    assert body["code"] == "url_not_allowed"
    assert body["message"] == (
        "messages[0].content[1]: %s/_fake/static/sample.pdf points to 127.0.0.1, a loopback, private or "
        "link-local address this gateway does not fetch from (FILE_FETCH_ALLOW can allow it)" % upstream.url)
    by_name = upstream.url.replace("127.0.0.1", "localhost") + "/_fake/static/sample.pdf"
    body = refused(gateway.client(key), [{"type": "image_url", "image_url": {"url": by_name}}])
    assert body["code"] == "url_not_allowed"
    assert upstream.log(key) == []


def test_redirect_to_an_address_not_allowed_is_refused(files_gateway, upstream, key):
    target = upstream.url.replace("127.0.0.1", "127.0.0.2") + "/_fake/static/sample.pdf"
    body = refused(files_gateway.client(key), [{"type": "image_url", "image_url": {
        "url": upstream.url + "/_fake/redirect?to=" + target}}])
    assert body["code"] == "url_not_allowed"
    assert "points to 127.0.0.2" in body["message"]
    assert upstream.log(key) == []


def test_bad_base64_is_refused(files_gateway, upstream, key):
    body = refused(files_gateway.client(key), [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR%%%"}}])
    assert body == {"message": "messages[0].content[0]: the data URL's base64 data cannot be decoded",
                    "type": "invalid_request_error", "param": "messages.0.content.0", "code": "invalid_base64"}
    assert upstream.log(key) == []


def test_text_labelled_as_png_is_refused(files_gateway, upstream, key):
    body = refused(files_gateway.client(key), [{"type": "image_url", "image_url": {
        "url": data_url("image/png", b"<html>not a picture</html>")}}])
    assert body["code"] == "invalid_image"
    assert body["message"] == ("messages[0].content[0]: the data is labelled image/png but is not a PNG, JPEG, "
                               "GIF or WebP image")
    assert upstream.log(key) == []


@pytest.mark.parametrize("chunked", ["", "1"])
def test_files_over_the_size_limit_are_refused(files_gateway, upstream, key, chunked):
    url = upstream.url + "/_fake/bytes?n=5000&type=application/pdf&chunked=" + chunked
    body = refused(files_gateway.client(key), [{"type": "image_url", "image_url": {"url": url}}])
    assert body["code"] == "file_too_large"
    assert body["message"] == ("messages[0].content[0]: %s is larger than the 4096 bytes this gateway takes "
                               "(FILE_MAX_BYTES)" % url)
    body = refused(files_gateway.client(key), [{"type": "image_url", "image_url": {
        "url": data_url("application/pdf", b"%PDF-" + b"x" * 5000)}}])
    assert body["code"] == "file_too_large"
    assert upstream.log(key) == []


def test_gpt_3_5_cannot_take_files(files_gateway, upstream, key):
    body = refused(files_gateway.client(key), [{"type": "text", "text": "see"}, {"type": "image_url", "image_url": {
        "url": data_url("image/png", image("PNG", (37, 23)))}}], model="gpt-3.5-turbo")
    assert body["code"] == "model_cannot_take_files"
    assert body["message"].startswith("the model gpt-3.5-turbo cannot read images or files")
    assert upstream.log(key) == []


@pytest.mark.parametrize("step, status, words, our_status", [
    ("create", 500, "step 1 of 3 (POST backend-api/files)", 502),
    ("put", 500, "step 2 of 3 (PUT upload_url)", 502),
    ("uploaded", 401, "step 3 of 3 (POST backend-api/files/", 401),
])
def test_a_failed_upload_step_is_named_and_nothing_is_asked(files_gateway, upstream, key, step, status, words, our_status):
    upstream.plan(key, upload_fail={"step": step, "status": status})
    with pytest.raises(openai.APIStatusError) as e:
        ask(files_gateway.client(key), [{"type": "image_url", "image_url": {
            "url": data_url("image/png", image("PNG", (37, 23)))}}])
    assert e.value.status_code == our_status
    assert e.value.body["message"].startswith("uploading the file failed at " + words)
    assert upstream.conversations(key) == []


def test_connection_is_pinned_to_the_checked_address(upstream):
    """The host name is never looked up again by curl: a name that cannot resolve still reaches
    the address it was pinned to, so a DNS answer that changes after the check cannot matter."""
    import asyncio

    from pgw.conf import settings as conf_settings
    from pgw.upstream import UpstreamClient

    port = int(upstream.url.rsplit(":", 1)[1])
    url = "http://pinned.invalid:%d/_fake/static/sample.pdf" % port

    async def fetch():
        client = UpstreamClient(conf_settings.load(environ={}))
        try:
            return await client.fetch_guarded(url, "pinned.invalid", port, "127.0.0.1", 4096, 5, 10)
        finally:
            client.close()

    got = asyncio.run(fetch())
    assert (got.status, len(got.body), bytes(got.body[:5])) == (200, PDF_SIZE, b"%PDF-")


def test_a_client_that_leaves_while_its_file_is_fetched_starts_nothing_upstream(files_gateway, upstream, key):
    """Uploads and the conversation (which costs the account quota) never start for a client
    that is gone: the preparation is abandoned as soon as the connection closes."""
    import json
    import socket
    import urllib.parse
    gate = key + "-file"
    url = upstream.url + "/_fake/bytes?n=100&type=text/plain&gate=" + gate
    body = json.dumps({"model": "gpt-4-s", "stream": True, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "read this"}, {"type": "image_url", "image_url": {"url": url}}]}]}).encode()
    u = urllib.parse.urlsplit(files_gateway.url)
    sock = socket.create_connection((u.hostname, u.port), timeout=10)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                 b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (key.encode(), len(body), body))
    assert upstream.wait_log(gate, lambda rs: rs)  # the gateway is fetching the file now
    sock.close()
    # The positive signal: the gateway abandons the fetch itself (its connection to the file's
    # server closes), so no byte of the file, and no upload or conversation, can follow.
    fetch = upstream.wait_log(gate, lambda rs: rs[0]["aborted"], timeout=10)
    assert fetch[0]["aborted"]
    upstream.release(gate)
    assert upstream.log(key) == []


def test_a_file_url_with_chinese_characters_is_fetched(files_gateway, upstream, key):
    url = upstream.url + "/_fake/bytes?n=10&type=text/plain&名字=猫"
    done = ask(files_gateway.client(key), [{"type": "text", "text": "读一下"}, {"type": "image_url", "image_url": {"url": url}}])
    assert done.choices[0].message.content
    assert [r["path"] for r in upstream.log(key)][:1] == ["/backend-api/files"]
