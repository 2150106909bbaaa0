"""Client keys: the one place that splits a Team account's ``<token>,<account id>``
(``UpstreamClient._headers``) and the one that masks keys for logs (``pgw.logs.mask``)."""

import pytest

from pgw.conf import settings as conf
from pgw.logs import mask
from pgw.upstream import UpstreamClient


@pytest.fixture
def client():
    c = UpstreamClient(conf.load(None, environ={}))
    yield c
    c.close()


def test_a_plain_key_is_the_bearer_token_and_nothing_else(client):
    headers = client._headers("fk-abcdefghijklmnop")
    assert headers["Authorization"] == "Bearer fk-abcdefghijklmnop"
    assert "ChatGPT-Account-Id" not in headers


def test_a_team_key_becomes_the_token_and_the_account_header(client):
    headers = client._headers("eyJhbGciOi.payload.sig, 6f1c2a9e-1111-2222-3333-444455556666", "text/event-stream")
    assert headers["Authorization"] == "Bearer eyJhbGciOi.payload.sig"
    assert headers["ChatGPT-Account-Id"] == "6f1c2a9e-1111-2222-3333-444455556666"
    assert headers["Accept"] == "text/event-stream"


def test_an_empty_account_part_sends_no_account_header(client):
    assert "ChatGPT-Account-Id" not in client._headers("fk-abcdefghijklmnop,")


def test_mask_masks_each_part_of_a_team_key():
    token, account = "eyJhbGciOiJSUzI1NiJ9.secret", "6f1c2a9e-1111-2222-3333-444455556666"
    masked = mask(token + "," + account)
    assert masked == "eyJh…cret,6f1c…6666"
    assert token not in masked and account not in masked and "secret" not in masked
    assert mask("short,tiny") == "*****,****"
