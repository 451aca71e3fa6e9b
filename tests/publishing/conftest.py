"""Fixtures of the publishing tests (no database)."""

import pytest

from .helpers import make_results


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return make_results(tmp_path_factory.mktemp("results"))
