"""Unit tests of the pure parts of file input: parsing parts, checking bytes, upstream shapes."""

import base64
import io

import pytest
from PIL import Image

from pgw.conf import settings as conf_settings
from pgw.conf.models import ModelTable
from pgw.converters.files import FileRef, inspect_file, multimodal_message, parse_data_url
from pgw.converters.payload import conversation_payload, parse_chat_request
from pgw.errors import ApiError
from pgw.upstream import UpstreamClient
from pgw.urlguard import AddressPolicy

PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<< >>\n%%EOF\n"


def image_bytes(fmt, size=(37, 23)):
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, fmt)
    return buf.getvalue()


def data_url(mime, data):
    return "data:%s;base64,%s" % (mime, base64.b64encode(data).decode())


def settings(**changes):
    return conf_settings.load(environ={}).replace(**changes)


def test_parts_are_kept_in_order_with_the_text():
    request = parse_chat_request({"model": "gpt-4-s", "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [
            {"type": "text", "text": "compare"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "high"}},
            {"type": "text", "text": "with"},
            {"type": "image_url", "image_url": "https://example.com/b.jpg"},
            {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBE", "filename": "paper.pdf"}},
        ]}]})
    assert request.messages == [("system", "be brief"), ("user", "compare\nwith")]
    assert request.files == {1: [
        FileRef("data:image/png;base64,AAAA", None, "messages[1].content[1]"),
        FileRef("https://example.com/b.jpg", None, "messages[1].content[3]"),
        FileRef("data:application/pdf;base64,JVBE", "paper.pdf", "messages[1].content[4]"),
    ]}


@pytest.mark.parametrize("part, code", [
    ({"type": "image_url", "image_url": {"url": "ftp://example.com/a.png"}}, "unsupported_url"),
    ({"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}, "unsupported_url"),
    ({"type": "image_url", "image_url": {}}, "invalid_request"),
    ({"type": "file", "file": {"file_id": "file-abc"}}, "unsupported_content"),
    ({"type": "input_audio", "input_audio": {}}, "unsupported_content"),
])
def test_unusable_parts_are_refused_with_a_400(part, code):
    with pytest.raises(ApiError) as e:
        parse_chat_request({"model": "gpt-4-s", "messages": [{"role": "user", "content": [part]}]})
    assert e.value.status == 400
    assert e.value.code == code
    assert e.value.param == "messages.0.content.0"


def test_data_url_decodes_and_bad_base64_is_a_400():
    assert parse_data_url("data:image/png;base64,aGVsbG8=", "w") == ("image/png", b"hello")
    assert parse_data_url("data:text/plain;charset=utf-8;base64,aGVsbG8", "w") == ("text/plain", b"hello")
    assert parse_data_url("data:text/plain,hi%20there", "w") == ("text/plain", b"hi there")
    with pytest.raises(ApiError) as e:
        parse_data_url("data:image/png;base64,@@not*base64!!", "messages[0].content[1]")
    assert (e.value.status, e.value.code) == (400, "invalid_base64")
    assert "messages[0].content[1]" in e.value.message


def test_png_of_odd_size_is_measured():
    data = image_bytes("PNG")
    info = inspect_file(data, "image/png", None, "w")
    assert (info.mime, info.width, info.height, info.size, info.use_case) == ("image/png", 37, 23, len(data), "multimodal")
    assert info.name == info.sha256 + ".png"


def test_an_image_mislabelled_as_another_image_type_goes_up_as_what_it_is():
    info = inspect_file(image_bytes("JPEG", (64, 48)), "image/png", "photo", "w")
    assert (info.mime, info.width, info.height, info.name) == ("image/jpeg", 64, 48, "photo")


def test_text_labelled_png_is_refused():
    with pytest.raises(ApiError) as e:
        inspect_file(b"this is not a picture", "image/png", None, "messages[0].content[0]")
    assert (e.value.status, e.value.code) == (400, "invalid_image")
    assert e.value.message == ("messages[0].content[0]: the data is labelled image/png but is not a PNG, "
                               "JPEG, GIF or WebP image")


def test_truncated_png_is_refused():
    with pytest.raises(ApiError):
        inspect_file(image_bytes("PNG")[:40], "image/png", None, "w")


def test_documents_are_checked_against_their_label():
    info = inspect_file(PDF, "application/pdf", "a.pdf", "w")
    assert (info.mime, info.use_case, info.width) == ("application/pdf", "my_files", None)
    assert inspect_file(PDF, "application/octet-stream", None, "w").mime == "application/pdf"
    assert inspect_file(b"print('hi')\n", "text/x-script.python", None, "w").use_case == "my_files"
    assert inspect_file(b"\x01\x02\x03binary", "", None, "w").use_case == "ace_upload"
    with pytest.raises(ApiError) as e:
        inspect_file(b"plain words", "application/pdf", None, "w")
    assert e.value.code == "invalid_file"
    with pytest.raises(ApiError):
        inspect_file(image_bytes("PNG").replace(b"PNG", b"XYZ"), "text/plain", None, "w")
    with pytest.raises(ApiError):
        inspect_file(b"", "text/plain", None, "w")


def test_multimodal_message_matches_the_web_client():
    png = inspect_file(image_bytes("PNG"), "image/png", None, "w")
    pdf = inspect_file(PDF, "application/pdf", "paper.pdf", "w")
    message = multimodal_message("m1", "user", "what is this?",
                                 [("file-a", png), ("file-b", pdf), ("file-a", png)])
    assert message == {
        "id": "m1", "author": {"role": "user"},
        "content": {"content_type": "multimodal_text", "parts": [
            {"asset_pointer": "file-service://file-a", "size_bytes": png.size, "width": 37, "height": 23},
            "what is this?"]},
        "metadata": {"attachments": [
            {"id": "file-a", "name": png.sha256 + ".png", "mimeType": "image/png", "size": png.size,
             "width": 37, "height": 23},
            {"id": "file-b", "name": "paper.pdf", "mimeType": "application/pdf", "size": len(PDF)},
        ]}}


def test_gpt_payload_carries_the_gizmo_when_known():
    models = ModelTable(settings())
    models.add_gpt("helper", "g-abc")
    payload = conversation_payload([("user", "hi")], models.resolve("helper"), lambda: "u1", gizmo={"gizmo": {"id": "g-abc"}})
    assert payload["model"] == "gpt-4-gizmo"
    assert payload["conversation_mode"] == {"kind": "gizmo_interaction", "gizmo_id": "g-abc",
                                            "gizmo": {"gizmo": {"id": "g-abc"}}}
    direct = conversation_payload([("user", "hi")], models.resolve("gpt-4-gizmo-g-XYZ"), lambda: "u1")
    assert direct["conversation_mode"] == {"kind": "gizmo_interaction", "gizmo_id": "g-XYZ"}


@pytest.mark.parametrize("address, allowed", [
    ("127.0.0.1", False), ("127.9.9.9", False), ("10.1.2.3", False), ("172.16.0.1", False),
    ("192.168.1.1", False), ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False),
    ("::1", False), ("fe80::1", False), ("fc00::1", False), ("::ffff:127.0.0.1", False), ("224.0.0.1", False),
    ("93.184.216.34", True), ("2606:4700::1111", True),
])
def test_default_policy_refuses_internal_addresses(address, allowed):
    assert AddressPolicy().allows_address(address) is allowed


def test_allow_list_opens_networks_and_hosts():
    policy = AddressPolicy(["10.0.0.0/8", "files.lan", "127.0.0.1"])
    assert policy.allows_address("10.200.0.1")
    assert policy.allows_address("127.0.0.1")
    assert not policy.allows_address("127.0.0.2")
    assert not policy.allows_address("192.168.0.1")
    assert policy.allows_host("FILES.lan.")
    assert not policy.allows_host("other.lan")


def test_allow_setting_is_checked():
    assert conf_settings.load(environ={"FILE_FETCH_ALLOW": "files.lan, 10.0.0.0/8"}).file_fetch_allow == \
        ["files.lan", "10.0.0.0/8"]
    with pytest.raises(conf_settings.SettingsError, match="FILE_FETCH_ALLOW"):
        conf_settings.load(environ={"FILE_FETCH_ALLOW": "10.0.0.0/99"})


def test_upload_host_override_keeps_path_and_signature():
    client = UpstreamClient(settings(upload_host_override="http://files.example:8080/blob"))
    try:
        assert client.upload_url("https://files.oaiusercontent.com/file-abc?se=1&sig=x%2B") == \
            "http://files.example:8080/blob/file-abc?se=1&sig=x%2B"
    finally:
        client.close()


@pytest.mark.parametrize("url, uri", [
    ("http://127.0.0.1:8080/图片.png?q=猫&x=1", "http://127.0.0.1:8080/%E5%9B%BE%E7%89%87.png?q=%E7%8C%AB&x=1"),
    ("https://例子.中国/a b/%E5%9B%BE.png", "https://xn--fsqu00a.xn--fiqs8s/a%20b/%E5%9B%BE.png"),
    ("http://ｌｏｃａｌｈｏｓｔ:9/x", "http://localhost:9/x"),  # then refused like localhost itself
    ("https://example.com/plain?a=1", "https://example.com/plain?a=1"),
])
def test_pasted_urls_become_uris_curl_can_take(url, uri):
    from pgw.urlguard import to_uri
    assert to_uri(url) == uri
