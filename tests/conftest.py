"""Shared fixtures: the fake upstream and real gateway processes on free loopback ports.

The fake upstream runs once per session; every test uses its own API key, so the plan it sets
(``upstream.plan(key, ...)``) and the requests it reads back (``upstream.log(key)``) are its
own. ``gateway_factory(**settings)`` runs ``server.py`` as a subprocess with those settings as
environment variables, exactly as a user would run it. The helpers behind them live in
``tests/helpers.py``; tests import those from there, never from this file.
"""

import uuid

import pytest

from tests.helpers import FakeUpstream, Gateway


@pytest.fixture(scope="session")
def upstream():
    fake = FakeUpstream()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def gateway_factory(upstream):
    started = []

    def start(**settings):
        settings.setdefault("BASE_URL", upstream.url)
        gw = Gateway(settings)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()


@pytest.fixture(scope="session")
def gateway(gateway_factory):
    """A gateway with default settings, shared by the tests that need nothing special."""
    return gateway_factory()


@pytest.fixture
def key():
    """A fresh API key: the fake upstream keys its plans and logs by it."""
    return "fk-test-" + uuid.uuid4().hex
