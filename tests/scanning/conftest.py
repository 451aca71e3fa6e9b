"""Fixtures for the metadata-store tests: a real emulator over real HTTP, in-process."""
from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from scanning.emulator.server import DATA_DIR, FIXTURE_FILES, EmulatorServer, make_server
from scanning.metadata_store import MetadataStoreClient

TOKEN = "test-token"


@pytest.fixture
def metadata_store() -> Iterator[EmulatorServer]:
    """The emulator loaded with the real fixture files, serving on a free port in a thread.

    Token ``"test-token"``; ``.url``, ``.store``, ``.faults`` (fault injection), ``.stats()``.
    """
    server = make_server("127.0.0.1", 0, FIXTURE_FILES, token=TOKEN).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def metadata_store_client(metadata_store: EmulatorServer) -> Iterator[MetadataStoreClient]:
    """A client of ``metadata_store`` with short timeouts and a tiny backoff (3 attempts)."""
    client = MetadataStoreClient(metadata_store.url, TOKEN, timeout=5.0, max_attempts=3, backoff_base=0.001)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def fixture_records() -> list[dict]:
    """The dataset records of the fixture files, read directly (the expected values)."""
    records: list[dict] = []
    for name in ("dataset_inventories_pid_1_118.json", "dataset_inventories_pid_2_114.json"):
        records += json.loads((DATA_DIR / name).read_text())["data"]["datasetInventories"]
    return records


@pytest.fixture(scope="session")
def fixture_experiments() -> dict[str, str]:
    items = json.loads((DATA_DIR / "experiment_descriptions.json").read_text())["data"]["experimentDescriptions"]
    return {item["experimentId"]: item["experimentDescription"] for item in items}
