"""Team/Business accounts: a client key ``<token>,<account id>`` reaches the upstream as
``Authorization: Bearer <token>`` plus ``ChatGPT-Account-Id`` on every call made for the
request (conversation, the three upload steps, file and sandbox downloads, the PATCH that
hides the conversation, GPT details), and the logs show neither part whole."""

import base64
import io
import json
import uuid

import pytest
from PIL import Image

from pgw.logs import mask


def team_key():
    token, account = "fk-team-" + uuid.uuid4().hex, "acct-" + uuid.uuid4().hex
    return token, account, "%s,%s" % (token, account)


def png():
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 10, 10)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def team_gateway(gateway_factory):
    return gateway_factory(LOG_LEVEL="DEBUG")


def backend_calls(upstream, token):
    return [r for r in upstream.log(token) if "/backend-api/" in r["path"]]


@pytest.mark.parametrize("ask, downloads", [("/chart 画个图", "/download"), ("/file 写个文件", "/interpreter/download")])
def test_every_upstream_call_of_a_request_carries_the_account(team_gateway, upstream, ask, downloads):
    token, account, key = team_key()
    team_gateway.client(key).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": [
        {"type": "text", "text": ask}, {"type": "image_url", "image_url": {"url": png()}}]}])
    records = upstream.wait_log(token, lambda rs: any(r["method"] == "PATCH" for r in rs))
    calls = [r for r in records if "/backend-api/" in r["path"]]
    kinds = {(r["method"], r["path"].split("/backend-api/", 1)[1].split("/")[0]) for r in calls}
    assert {("POST", "files"), ("POST", "conversation"), ("PATCH", "conversation")} <= kinds
    assert any(r["path"].endswith("/uploaded") for r in calls)
    assert any(downloads in r["path"] for r in calls)
    assert [(r["authorization"], r["account_id"]) for r in calls] == [("Bearer " + token, account)] * len(calls)
    # the PUT to blob storage carries neither (it is not the upstream's API)
    assert all(r["authorization"] is None for r in records if r["method"] == "PUT")
    log = team_gateway.log_text()
    assert token not in log and account not in log
    assert mask(key) in log and mask(key) == mask(token) + "," + mask(account)


def test_a_plain_key_sends_no_account_header(team_gateway, upstream, key):
    team_gateway.client(key).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "你好"}])
    [conv] = upstream.conversations(key)
    assert conv["authorization"] == "Bearer " + key and conv["account_id"] is None


def test_spaces_around_the_comma_are_not_part_of_either(team_gateway, upstream):
    token, account, _ = team_key()
    team_gateway.client("%s , %s" % (token, account)).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=False)
    [conv] = upstream.conversations(token)
    assert (conv["authorization"], conv["account_id"]) == ("Bearer " + token, account)


def test_gpt_details_are_fetched_with_the_info_keys_account(gateway_factory, upstream, tmp_path):
    token, account, key = team_key()
    path = tmp_path / "gpts.json"
    path.write_text(json.dumps({"team-gpt": {"id": "g-team1"}}))
    gateway_factory(GPTS_CONFIG=str(path), KEY_FOR_GPTS_INFO=key)
    [get] = upstream.wait_log(token, lambda rs: len(rs) >= 1)
    assert get["path"].endswith("/gizmos/g-team1")
    assert (get["authorization"], get["account_id"]) == ("Bearer " + token, account)
