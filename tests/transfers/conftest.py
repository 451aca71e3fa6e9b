"""Fixtures of the transfer tests (no database).

Globus is only ever reached through globus-sdk's testing helpers: ``globus_sdk.testing``
registered responses, served by the ``responses`` library in place of the network.
"""
from __future__ import annotations

import pytest
import responses

from inversions import globus_transfers


@pytest.fixture
def globus_http():
    """Every HTTP request of the test answered by registered responses (none reaches out).

    The pattern globus-sdk documents for its testing helpers: ``responses.start()`` so that
    ``globus_sdk.testing.load_response`` registers on the active mock.
    """
    globus_transfers.reset_token_cache()
    responses.start()
    try:
        yield responses
    finally:
        responses.stop()
        responses.reset()
        globus_transfers.reset_token_cache()


@pytest.fixture
def collections(settings, tmp_path):
    """Four local collections (folders) and the settings that name them."""
    roots = {name: tmp_path / name for name in ("l1", "scratch", "science", "elsewhere")}
    for root in roots.values():
        root.mkdir()
    settings.L2_COLLECTIONS = {name: str(root) for name, root in roots.items() if name != "elsewhere"}
    return roots
