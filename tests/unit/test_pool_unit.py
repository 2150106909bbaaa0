"""The account pool's rules without processes or clocks: the accounts file, access keys, what
each upstream refusal means, the memory back end's FIFO queue and choice of account, and the
refresh-token cache (against a stand-in token endpoint)."""

import asyncio
import base64
import io
import json
import os
import time
import uuid

import pytest
from tornado.httpclient import HTTPResponse

from pgw.conf import settings as conf_settings
from pgw.errors import ApiError
from pgw.pool import AccessKeys, Account, AccountsError, MemoryPool, Verdict, load_accounts, parse_accounts, verdict
from pgw.tokens import FileStore, TokenError, Tokens, jwt_exp, looks_like_refresh_token

ONE_AT_A_TIME = json.dumps({"detail": "Only one message at a time. Please allow any other responses to complete "
                                      "before sending another message, or wait one minute."}).encode()


def settings(**changes):
    return conf_settings.load(environ={}).replace(**changes)


def jwt(claims):
    def part(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    return "%s.%s.sig" % (part({"alg": "RS256"}), part(claims))


# -- the accounts file and keys

def test_accounts_file_forms():
    accounts, keys = parse_accounts([{"label": "a1", "access_token": "tok1"},
                                     {"refresh_token": "rt", "account_id": "acc-9", "max_concurrent": 2}], "f")
    assert [(a.label, a.kind, a.account_id, a.max_concurrent) for a in accounts] == [
        ("a1", "access_token", None, None), ("account-2", "refresh_token", "acc-9", 2)]
    assert keys == []
    assert accounts[1].key_with("at") == "at,acc-9" and accounts[0].key_with("tok1") == "tok1"
    accounts, keys = parse_accounts({"accounts": [{"share_token": "fk-x"}], "access_keys": ["k1", " k2 "]}, "f")
    assert accounts[0].kind == "share_token" and keys == ["k1", "k2"]


@pytest.mark.parametrize("data, words", [
    ({"accounts": "x"}, "list of accounts"),
    ([{"label": "a"}], "exactly one of"),
    ([{"access_token": "a", "refresh_token": "b"}], "exactly one of"),
    ([{"access_token": "a,b"}], "without commas"),
    ([{"access_token": "a", "max_concurrent": 0}], "max_concurrent"),
    ([{"access_token": "a", "max_concurrent": True}], "max_concurrent"),
    ({"accounts": [], "access_keys": [""]}, "access_keys"),
    (["tok"], "not an object"),
])
def test_bad_accounts_files_say_what_is_wrong(data, words):
    with pytest.raises(AccountsError, match=words):
        parse_accounts(data, "ACCOUNTS_FILE x")


def test_upstream_keys_and_access_keys_settings(tmp_path):
    s = settings(accounts_file=str(tmp_path / "missing.json"), upstream_keys="t1, t2:acct-2,", access_keys="ak1,ak2")
    accounts, keys = load_accounts(s)
    assert [(a.token, a.account_id) for a in accounts] == [("t1", None), ("t2", "acct-2")]
    assert keys == ["ak1", "ak2"]
    path = tmp_path / "accounts.json"
    path.write_text(json.dumps([{"label": "same", "access_token": "x"}, {"label": "same", "access_token": "y"}]))
    with pytest.raises(AccountsError, match="label same"):
        load_accounts(settings(accounts_file=str(path)))
    path.write_text("{nope")
    with pytest.raises(AccountsError, match="cannot be read"):
        load_accounts(settings(accounts_file=str(path)))
    # One upstream account listed twice would get two messages at once: refused, naming both labels.
    path.write_text(json.dumps([{"label": "one", "access_token": "t1"}]))
    with pytest.raises(AccountsError, match="one and key-1 have the same token") as caught:
        load_accounts(settings(accounts_file=str(path), upstream_keys="t1"))
    assert "t1" not in str(caught.value).replace("key-1", "")
    assert len(load_accounts(settings(accounts_file=str(path), upstream_keys="t1:team-7"))[0]) == 2  # a team seat


def test_access_keys_match_exactly():
    keys = AccessKeys(["ak-secret-1", "ak-secret-2"])
    assert keys.match("ak-secret-2") and not keys.match("ak-secret-") and not keys.match("ak-secret-22")
    assert not AccessKeys([]).match("") and not keys.match("")


# -- what a refusal means

@pytest.mark.parametrize("status, body, expect", [
    (429, ONE_AT_A_TIME, dict(retry=True, bench=10.0, model=None)),
    (429, b'{"detail": {"code": "model_cap_exceeded", "message": "...", "clears_in": 252}}',
     dict(retry=True, bench=252.0, model="gpt-4o")),
    (401, b'{"detail": "Unauthorized"}', dict(retry=True, refresh=True, unhealthy=True)),
    (403, b'{"detail": "Unusual activity has been detected from your device."}', dict(retry=True, bench=60.0)),
    (502, b"bad gateway", dict(retry=True, bench=0.0)),
    (None, b"", dict(retry=True, bench=0.0)),
    (400, b'{"detail": {"code": "flagged_by_moderation"}}', dict(retry=False)),
    (413, b'{"detail": {"message": "too long"}}', dict(retry=False)),
])
def test_verdicts(status, body, expect):
    v = verdict(status, body, "gpt-4o", settings())
    for name, value in expect.items():
        assert getattr(v, name) == value, name


def test_forbidden_backs_off_and_is_capped():
    s = settings()
    assert [verdict(403, b"{}", "m", s, n).bench for n in range(8)] == [60, 120, 240, 480, 960, 1920, 3600, 3600]


# -- the memory back end

class NoTokens:
    def expiry(self, account):
        return None


def state_of(pool, label):
    """The memory back end's state of the account now labelled ``label``."""
    return pool.state[pool.accounts[label].ident]


def pool_of(n, **changes):
    s = settings(**changes)
    return MemoryPool(s, [Account("a%d" % i, "access_token", "tok%d" % i) for i in range(n)], ["ak"], NoTokens())


def run(coro):
    return asyncio.run(coro)


async def settle():
    """Let every task that can run, run (a bounded number of loop turns, no clock)."""
    for _ in range(20):
        await asyncio.sleep(0)


def test_least_busy_then_least_recently_used():
    async def go():
        pool = pool_of(3, max_concurrent_per_account=2)
        got = [await pool.acquire("m") for _ in range(3)]
        assert sorted(lease.label for lease in got) == ["a0", "a1", "a2"]  # each account once before any twice
        await pool.release(got[1])
        nxt = await pool.acquire("m")
        assert nxt.label == got[1].label  # the only one with nothing in flight
        assert nxt.key == "tok" + nxt.label[1:]
    run(go())


def test_waiters_are_served_in_arrival_order_and_leavers_drop_out():
    async def go():
        pool = pool_of(1, queue_timeout=100)
        first = await pool.acquire("m")
        order = []

        async def wait(i):
            lease = await pool.acquire("m")
            order.append(i)
            return lease
        tasks = [asyncio.ensure_future(wait(i)) for i in range(5)]
        await settle()
        assert len(pool.waiters) == 5
        tasks[2].cancel()  # a client that leaves
        await settle()
        assert len(pool.waiters) == 4
        await pool.release(first)
        for i in (0, 1, 3):
            await settle()
            assert order[-1] == i
            await pool.release(tasks[i].result())
        await settle()
        lease = tasks[4].result()
        assert order == [0, 1, 3, 4]
        await pool.release(lease)
        assert state_of(pool, "a0").in_flight == 0
        assert (await pool.snapshot())["queued"] == 0
    run(go())


def test_an_account_handed_to_a_waiter_that_left_in_the_same_instant_goes_back():
    async def go():
        pool = pool_of(1, queue_timeout=100)
        first = await pool.acquire("m")
        task = asyncio.ensure_future(pool.acquire("m"))
        await settle()
        await pool.release(first)   # hands the account to the waiter...
        task.cancel()               # ...which leaves before it runs
        with pytest.raises(asyncio.CancelledError):
            await task
        assert state_of(pool, "a0").in_flight == 0
    run(go())


def test_an_answer_finishes_only_after_the_request_its_account_went_to_has_resumed():
    """``free`` hands the account over; the answer that freed it waits on what ``free`` returns,
    so the next request's upstream call is not held up by this answer's finishing."""
    async def go():
        pool = pool_of(2, queue_timeout=100)
        leases = [await pool.acquire("m"), await pool.acquire("m")]
        events = []

        async def waiter(i):
            lease = await pool.acquire("m")
            events.append("waiter %d resumed" % i)
            return lease
        tasks = [asyncio.ensure_future(waiter(i)) for i in range(3)]
        await settle()

        async def finish(i):
            after = pool.free(leases[i])
            assert after is not None
            await after
            events.append("answer %d finished" % i)
        # both answers end in one loop turn, each one's finishing queued ahead of the waiters
        finishing = [asyncio.ensure_future(finish(i)) for i in range(2)]
        await settle()
        assert events == ["waiter 0 resumed", "waiter 1 resumed", "answer 0 finished", "answer 1 finished"]
        assert all(f.done() for f in finishing) and not tasks[2].done()
        after = pool.free(tasks[0].result())  # to waiter 2...
        assert after is not None and not after.done()
        tasks[2].cancel()  # ...which leaves before it resumes: the answer need not wait on it
        await settle()
        assert after.done()
        assert pool.free(tasks[1].result()) is None  # nobody waiting: the answer finishes at once
        assert all(s.in_flight == 0 for s in pool.state.values())
    run(go())


def test_benched_accounts_are_skipped_and_all_benched_says_when():
    async def go():
        pool = pool_of(2)
        lease = await pool.acquire("gpt-4o")
        await pool.mark(lease, Verdict(True, 300, "gpt-4o", "usage cap"))
        await pool.release(lease)
        other = await pool.acquire("gpt-4o")
        assert other.label != lease.label
        await pool.mark(other, Verdict(True, 100, None, "busy"))
        await pool.release(other)
        with pytest.raises(Exception) as caught:
            await pool.acquire("gpt-4o")
        error = caught.value
        assert error.status == 429 and error.code == "accounts_benched" and error.headers["Retry-After"] == "100"
        again = await pool.acquire("gpt-4o-mini")  # the cap is per model: the first account answers others
        assert again.label == lease.label
    run(go())


def test_a_waiter_whose_accounts_all_get_benched_is_told_at_once():
    async def go():
        pool = pool_of(1, queue_timeout=100)
        lease = await pool.acquire("m")
        task = asyncio.ensure_future(pool.acquire("m"))
        await settle()
        await pool.mark(lease, Verdict(True, 50, None, "forbidden (403)"))
        await pool.release(lease)
        with pytest.raises(Exception) as caught:
            await task
        assert caught.value.code == "accounts_benched"
    run(go())


class ProbedUpstream:
    """Answers the pool's re-checks (``GET conversation/<id>``) with the statuses given, then 404
    "Conversation not found" (what the upstream answers a valid token for an unknown id)."""

    def __init__(self, statuses):
        self.statuses = list(statuses)
        self.calls = []

    async def get_conversation(self, key, conversation_id, timeout=30):
        self.calls.append((key, conversation_id))
        status = self.statuses.pop(0) if self.statuses else 404
        body = {401: b'{"detail": "Unauthorized"}', 599: b"connection refused"}.get(
            status, b'{"detail": "Conversation not found"}' if status == 404 else b"{}")
        return status, None, body


def test_an_unhealthy_account_is_handed_to_nobody_until_a_recheck_finds_its_token_accepted():
    async def go():
        upstream = ProbedUpstream([599, 503, 401])  # no answer, a 5xx, still refused; then accepted
        pool = MemoryPool(settings(unhealthy_recheck=0.01), [Account("team", "access_token", "tok", "acc-1")],
                          ["ak"], NoTokens(), upstream)
        lease = await pool.acquire("m")
        v = await pool.refused(lease, 401, b'{"detail": "Unauthorized"}')
        await pool.release(lease)
        assert v.retry and v.unhealthy
        seen_refused = False
        for _ in range(500):  # bounded: re-checks every 10 ms
            row = (await pool.snapshot())["accounts"][0]
            if row["health"] == "ok":
                break
            assert row["health"] == "unhealthy" and row["recheck_at"] is not None
            seen_refused |= "re-check: still refused (HTTP 401" in (row["last_error"] or "")
            with pytest.raises(ApiError) as caught:  # whatever the clock says, nobody gets it meanwhile
                await pool.acquire("m")
            assert caught.value.code == "accounts_benched"
            await asyncio.sleep(0.005)
        assert row["health"] == "ok" and row["recheck_at"] is None and seen_refused
        assert len(upstream.calls) == 4  # and no re-check once it is back
        assert {key for key, _ in upstream.calls} == {"tok,acc-1"}  # the team header goes with each
        assert len({str(uuid.UUID(cid)) for _, cid in upstream.calls}) == 4  # a fresh random id each time
        back = await pool.acquire("m")
        assert back.label == "team"
        await pool.release(back)
        await asyncio.sleep(0.05)
        assert len(upstream.calls) == 4
    run(go())


def test_a_recheck_of_a_refresh_token_account_exchanges_it_again_first():
    class Refreshing(NoTokens):
        calls = []

        async def access_token(self, refresh_token, force=False):
            self.calls.append((refresh_token, force))
            return "fresh-%d" % len(self.calls)

    async def go():
        upstream, tokens = ProbedUpstream([]), Refreshing()
        pool = MemoryPool(settings(), [Account("r", "refresh_token", "rt-x")], ["ak"], tokens, upstream)
        assert await pool.probe(pool.accounts["r"]) == ("ok", "HTTP 404")
        assert tokens.calls == [("rt-x", True)] and upstream.calls[0][0] == "fresh-1"
    run(go())


def test_queue_full_and_no_accounts():
    async def go():
        pool = pool_of(1, queue_max=1, queue_timeout=100)
        await pool.acquire("m")
        waiting = asyncio.ensure_future(pool.acquire("m"))
        await settle()
        with pytest.raises(Exception) as caught:
            await pool.acquire("m")
        assert caught.value.code == "queue_full"
        waiting.cancel()
        with pytest.raises(Exception) as caught:
            await pool_of(0).acquire("m")
        assert caught.value.status == 503
    run(go())


def test_reload_keeps_leases_in_flight():
    async def go():
        pool = pool_of(2)
        lease = await pool.acquire("m")
        old = pool.accounts[lease.label]
        await pool.reload([Account(lease.label, "access_token", "new"), Account("b", "access_token", "tb")], ["k2"])
        # The label's new token starts clean; the old token's answer still counts against the old token.
        assert state_of(pool, lease.label).in_flight == 0 and pool.state[old.ident].in_flight == 1
        assert pool.is_access_key("k2") and not pool.is_access_key("ak")
        await pool.release(lease)
        assert old.ident not in pool.state  # forgotten once its last lease came back
    run(go())


# -- tokens

def test_jwt_exp_and_refresh_token_shapes():
    assert jwt_exp(jwt({"exp": 1700000000})) == 1700000000
    assert jwt_exp(jwt({"sub": "x"})) is None and jwt_exp("not.a.jwt") is None and jwt_exp("abc") is None
    assert looks_like_refresh_token("Mw8zTKmLdqAqN1xVfZg4WjYb3cHs5uEoRpQi7nKtFd2")
    assert not looks_like_refresh_token(jwt({"exp": 1}))
    assert not looks_like_refresh_token("fk-" + "a" * 40) and not looks_like_refresh_token("short")
    assert not looks_like_refresh_token("a" * 40 + ",acct")


class TokenEndpoint:
    """Answers the refresh grant like auth0: a JWT, and a rotated refresh token when asked."""

    def __init__(self, rotate=False, status=200):
        self.calls = []
        self.rotate = rotate
        self.status = status

    async def fetch_any(self, request):
        body = json.loads(request.body)
        self.calls.append(body)
        await asyncio.sleep(0)
        if self.status != 200:
            return HTTPResponse(request, self.status, buffer=io.BytesIO(b'{"error": "invalid_grant"}'))
        answer = {"access_token": jwt({"exp": time.time() + 86400 * 10, "n": len(self.calls)}), "expires_in": 864000}
        if self.rotate:
            answer["refresh_token"] = "rotated-%d" % len(self.calls)
        return HTTPResponse(request, 200, buffer=io.BytesIO(json.dumps(answer).encode()))


def test_tokens_exchange_once_cache_rotate_and_persist(tmp_path):
    async def go():
        endpoint = TokenEndpoint(rotate=True)
        store = FileStore(str(tmp_path / "data"))
        tokens = Tokens(settings(), endpoint, store)
        a, b = await asyncio.gather(tokens.access_token("rt-original"), tokens.access_token("rt-original"))
        assert a == b and len(endpoint.calls) == 1  # concurrent askers share one exchange
        call = endpoint.calls[0]
        assert call["grant_type"] == "refresh_token" and call["refresh_token"] == "rt-original"
        assert call["client_id"] == "pdlLIX2Y72MIl2rhLhTE9VV9bN905kBh" and call["redirect_uri"].startswith("com.openai")
        assert await tokens.access_token("rt-original") == a and len(endpoint.calls) == 1
        forced = await tokens.access_token("rt-original", force=True)
        assert forced != a and endpoint.calls[1]["refresh_token"] == "rotated-1"  # the rotated one is used
        path = tmp_path / "data" / "tokens.json"
        assert os.stat(path).st_mode & 0o777 == 0o600 and "rt-original" not in path.read_text()
        restarted = Tokens(settings(), endpoint, FileStore(str(tmp_path / "data")))
        assert await restarted.access_token("rt-original") == forced and len(endpoint.calls) == 2
    run(go())


def test_a_refused_refresh_token_raises_without_showing_it():
    async def go():
        tokens = Tokens(settings(), TokenEndpoint(status=403), None)
        with pytest.raises(TokenError) as caught:
            await tokens.access_token("rt-secret-value")
        assert "403" in str(caught.value) and "rt-secret-value" not in str(caught.value)
    run(go())


def test_tokens_near_expiry_are_exchanged_again():
    async def go():
        endpoint = TokenEndpoint()
        tokens = Tokens(settings(refresh_ahead=86400 * 11), endpoint, None)  # always "near" expiry
        await tokens.access_token("rt")
        await tokens.access_token("rt")
        assert len(endpoint.calls) == 2
    run(go())


def test_the_background_refresh_renews_only_tokens_near_their_exp():
    async def go():
        endpoint = TokenEndpoint(rotate=True)
        tokens = Tokens(settings(refresh_ahead=3600), endpoint, None)
        first = await tokens.access_token("rt-a")
        await tokens.access_token("rt-b")
        await tokens._refresh_due()
        assert len(endpoint.calls) == 2  # both valid for ten days: nothing to do
        soon = next(e for e in tokens.entries.values() if e["access_token"] == first)
        soon["exp"] = time.time() + 60  # within REFRESH_AHEAD
        await tokens._refresh_due()
        assert len(endpoint.calls) == 3 and endpoint.calls[2]["refresh_token"] == "rotated-1"
        assert await tokens.access_token("rt-a") != first and len(endpoint.calls) == 3
    run(go())
