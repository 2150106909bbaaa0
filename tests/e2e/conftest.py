"""Everything under tests/e2e/ starts processes: marked ``e2e`` so that
``./run.sh test -m "not e2e"`` runs only the fast, pure tier (tests/unit/)."""

import os

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def pytest_collection_modifyitems(config, items):
    for item in items:
        if str(item.fspath).startswith(HERE + os.sep):
            item.add_marker(pytest.mark.e2e)
