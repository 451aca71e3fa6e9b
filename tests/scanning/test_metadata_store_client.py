"""The metadata-store client against the emulator over real HTTP: queries, paging, error
classification and retries (DESIGN §7, §14), L2 inversions."""
from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

import pytest
import requests

from inversions.errors import BackoffRetryError, DoNotRetryError
from scanning.emulator.server import make_server
from scanning.metadata_store import DATASET_FIELDS, MetadataStoreClient, format_store_datetime

from .conftest import TOKEN


def client_for(server, token: str | None = TOKEN, **kw) -> MetadataStoreClient:
    options = {"timeout": 5.0, "max_attempts": 3, "backoff_base": 0.001, **kw}
    return MetadataStoreClient(server.url, token, **options)


INVERSION = {"inversionId": "inv-7", "primaryProposalId": "pid_2_114", "instrumentProgramExecutionId": "id.1.2",
             "bucket": "data", "asdfObjectKey": "pid_2_114/inv-7/inv-7.asdf",
             "datasetIds": ["AAAAA"], "spectralLines": ["Fe I (630.15 nm)", "Ca II (854.21 nm)"]}


# ------------------------------------------------------------------ queries


def test_dataset_pages_have_the_design_fields_and_match_the_files(metadata_store_client, fixture_records):
    page = metadata_store_client.dataset_inventories(10, 1)
    assert len(page) == 10 and all(list(r) == list(DATASET_FIELDS) for r in page)
    by_id = {r["datasetId"]: r for r in fixture_records}
    for record in page:
        stored = by_id[record["datasetId"]]
        assert {k: record[k] for k in stored} == stored  # every stored field arrives unchanged
        assert record["productId"] == f"L1-{record['datasetId']}"  # the emulator derives what the fixtures lack
    pid = metadata_store_client.dataset_inventories(500, 1, proposal_ids=["pid_1_118"])
    assert len(pid) == 136 and {r["primaryProposalId"] for r in pid} == {"pid_1_118"}
    visp = metadata_store_client.dataset_inventories(500, 1, instrument_names=["VISP"], proposal_ids=["pid_2_114"])
    assert len(visp) == sum(1 for r in fixture_records
                            if r["instrumentName"] == "VISP" and r["primaryProposalId"] == "pid_2_114")
    ids = [r["datasetId"] for r in fixture_records[:7]]
    chosen = metadata_store_client.dataset_inventories(100, 1, dataset_ids=ids)
    assert sorted(r["datasetId"] for r in chosen) == sorted(ids)


def test_update_window_with_datetimes(metadata_store_client, fixture_records):
    dates = sorted(datetime.fromisoformat(r["updateDate"]) for r in fixture_records)
    low = dates[200].replace(tzinfo=UTC).astimezone(timezone(timedelta(hours=-10)))  # HST, same instant
    high = dates[399]
    assert format_store_datetime(low) == dates[200].isoformat(timespec="microseconds")
    got = metadata_store_client.dataset_inventories(1000, 1, update_date_min=low, update_date_max=high)
    assert len(got) == 200
    assert metadata_store_client.dataset_inventory_count(update_date_min=low, update_date_max=high) == 200
    assert metadata_store_client.dataset_inventory_count() == 508


def test_iterating_pages_stops_at_the_short_page(metadata_store, metadata_store_client, fixture_records):
    pages = list(metadata_store_client.iter_dataset_inventory_pages(page_size=100))
    assert [len(p) for p in pages] == [100] * 5 + [8]
    assert sorted(r["datasetId"] for p in pages for r in p) == sorted(r["datasetId"] for r in fixture_records)
    assert metadata_store_client.request_count == 6
    # an exact multiple costs one more (empty) request and yields no empty page
    pages = list(metadata_store_client.iter_dataset_inventory_pages(page_size=68, proposal_ids=["pid_1_118"]))
    assert [len(p) for p in pages] == [68, 68]
    assert metadata_store_client.request_count == 6 + 3
    assert metadata_store.stats()["graphql_requests"] == 9
    assert metadata_store.stats()["connections"] == 1  # one session, one kept-alive connection
    # an empty id list asks for nothing, without a request
    assert list(metadata_store_client.iter_dataset_inventory_pages(page_size=10, dataset_ids=[])) == []
    assert metadata_store_client.request_count == 9


def test_experiment_descriptions(metadata_store_client, fixture_experiments):
    assert metadata_store_client.experiment_descriptions() == fixture_experiments


def test_garbage_records_reach_the_caller_as_sent():
    garbage = [{"datasetId": "G1", "frameCount": "many", "createDate": "2020-01-01T00:00:00", "health": "bad"},
               12345]
    server = make_server(records=garbage, token=TOKEN).start()
    try:
        with client_for(server) as client:
            page = client.dataset_inventories(10, 1)
        assert page[0]["frameCount"] == "many" and page[0]["health"] == "bad" and page[0]["bucket"] == "data"
        assert 12345 in page
    finally:
        server.stop()


# ------------------------------------------------------------------ failures


def test_transient_statuses_are_retried_then_succeed(metadata_store, metadata_store_client):
    metadata_store.faults.fail(503, count=2)
    assert metadata_store_client.dataset_inventory_count() == 508
    assert metadata_store_client.request_count == 3 == metadata_store.stats()["graphql_requests"]


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429])
def test_persistent_5xx_gives_backoff_retry_error_after_max_attempts(metadata_store, metadata_store_client, status):
    metadata_store.faults.fail(status, count=10)
    with pytest.raises(BackoffRetryError) as raised:
        metadata_store_client.dataset_inventories(10, 1)
    assert f"HTTP {status}" in str(raised.value) and raised.value.details["attempts"] == 3
    assert raised.value.step == "metadata_store"
    assert metadata_store_client.request_count == 3 == metadata_store.stats()["graphql_requests"]


def test_malformed_json_is_retried(metadata_store, metadata_store_client):
    metadata_store.faults.malformed(count=1)
    assert len(metadata_store_client.dataset_inventories(5, 1)) == 5
    assert metadata_store_client.request_count == 2
    metadata_store.faults.malformed(count=3)
    with pytest.raises(BackoffRetryError, match="malformed JSON"):
        metadata_store_client.dataset_inventories(5, 1)
    assert metadata_store_client.request_count == 5


def test_timeouts_and_dropped_connections_are_retried(metadata_store):
    client = client_for(metadata_store, timeout=0.2)
    metadata_store.faults.delay(0.6)
    metadata_store.faults.disconnect()
    assert client.dataset_inventory_count() == 508  # timeout, dropped connection, then an answer
    assert client.request_count == 3
    metadata_store.faults.delay(0.6, count=3)
    with pytest.raises(BackoffRetryError, match="timeout"):
        client.dataset_inventory_count()
    assert client.request_count == 6
    metadata_store.faults.clear()
    client.close()


def test_connection_refused_is_a_backoff_retry_error():
    server = make_server(files=(), token=None)
    url = server.url
    server.server_close()  # nothing listens there any more
    client = MetadataStoreClient(url, None, timeout=1.0, max_attempts=2, backoff_base=0.001)
    with pytest.raises(BackoffRetryError, match="connection error"):
        client.experiment_descriptions()
    assert client.request_count == 2


def test_4xx_is_not_retried_and_carries_the_store_message(metadata_store, metadata_store_client):
    metadata_store.faults.bad_request("pageSize exceeds the maximum of 500", json_body=True)
    with pytest.raises(DoNotRetryError, match="HTTP 400.*pageSize exceeds the maximum of 500") as raised:
        metadata_store_client.dataset_inventories(1000, 1)
    assert raised.value.details["status"] == 400
    metadata_store.faults.bad_request("plain text complaint")
    with pytest.raises(DoNotRetryError, match="plain text complaint"):
        metadata_store_client.dataset_inventories(10, 1)
    assert metadata_store_client.request_count == 2


def test_wrong_token_is_do_not_retry(metadata_store):
    for token in ("wrong-token", None):
        client = client_for(metadata_store, token=token)
        with pytest.raises(DoNotRetryError, match="HTTP 401.*Unauthorized"):
            client.dataset_inventories(10, 1)
        assert client.request_count == 1
        client.close()


def test_graphql_errors_are_do_not_retry(metadata_store_client):
    with pytest.raises(DoNotRetryError, match="wavelengthRanges") as raised:
        metadata_store_client.query("query($f: DatasetInventoriesRequest) { datasetInventories(filterParams: $f) "
                                    "{ datasetId } }", {"f": {"wavelengthRanges": [1.0]}})
    assert raised.value.details["graphql_errors"]
    with pytest.raises(DoNotRetryError, match="Cannot query field"):
        metadata_store_client.query("{ datasetInventories { notAField } }")
    assert metadata_store_client.request_count == 2


def test_bad_url_is_do_not_retry():
    client = MetadataStoreClient("not-a-url", "t", max_attempts=5, backoff_base=0.001)
    with pytest.raises(DoNotRetryError, match="cannot send"):
        client.query("{ l2Inversions { inversionId } }")
    assert client.request_count == 1


def test_backoff_is_exponential_with_full_jitter_and_bounded(metadata_store):
    sleeps: list[float] = []
    client = MetadataStoreClient(metadata_store.url, TOKEN, timeout=5.0, max_attempts=6, backoff_base=0.5,
                                 backoff_max=3.0, sleep=sleeps.append, rng=random.Random(1))
    metadata_store.faults.fail(503, count=6)
    with pytest.raises(BackoffRetryError):
        client.dataset_inventory_count()
    caps = [0.5, 1.0, 2.0, 3.0, 3.0]  # base * 2**(n-1), capped at backoff_max; no sleep after the last try
    assert len(sleeps) == 5 and all(0.0 <= s <= cap for s, cap in zip(sleeps, caps, strict=True))
    draws = [client.backoff_delay(4) for _ in range(200)]
    assert max(draws) <= 3.0 and min(draws) < 0.5 < 2.5 < max(draws)  # jitter spreads over [0, cap]
    client.close()


# ------------------------------------------------------------------ L2 inversions


def test_l2_inversion_round_trip(metadata_store_client):
    created = metadata_store_client.create_l2_inversion_inventory(INVERSION)
    assert {k: created[k] for k in INVERSION} == INVERSION and created["createDate"]
    metadata_store_client.create_l2_inversion_inventory(dict(INVERSION, inversionId="inv-8", datasetIds=["BBBBB"],
                                                             asdfObjectKey=None))
    assert [i["inversionId"] for i in metadata_store_client.l2_inversions()] == ["inv-7", "inv-8"]
    assert metadata_store_client.l2_inversions(inversion_id="inv-8")[0]["asdfObjectKey"] is None
    assert [i["inversionId"] for i in metadata_store_client.l2_inversions(dataset_ids=["BBBBB"])] == ["inv-8"]
    assert metadata_store_client.l2_inversions(inversion_id="nope") == []


def test_duplicate_inversion(metadata_store, metadata_store_client):
    first = metadata_store_client.create_l2_inversion_inventory(INVERSION)
    # the same inversion again (a retried publish): the stored record, no error
    assert metadata_store_client.create_l2_inversion_inventory(INVERSION) == first
    with pytest.raises(DoNotRetryError, match="already exists"):
        metadata_store_client.create_l2_inversion_inventory(INVERSION, idempotent=False)
    with pytest.raises(DoNotRetryError, match="already exists"):
        metadata_store_client.create_l2_inversion_inventory(dict(INVERSION, bucket="other"))
    assert len(metadata_store.store.l2_inversions()) == 1


def test_create_after_a_lost_answer_is_idempotent(metadata_store, metadata_store_client):
    # the store stores the inversion but the answer is lost (a 502 from a proxy on the way back is
    # emulated by creating it first, then failing the next request): the retry finds it stored.
    metadata_store.store.create_l2_inversion(INVERSION)
    metadata_store.faults.fail(502)
    assert metadata_store_client.create_l2_inversion_inventory(INVERSION)["inversionId"] == "inv-7"


def test_invalid_inversions_are_refused(metadata_store_client):
    with pytest.raises(DoNotRetryError, match="bucket"):
        metadata_store_client.create_l2_inversion_inventory({k: v for k, v in INVERSION.items() if k != "bucket"})
    with pytest.raises(ValueError, match="notAField"):
        metadata_store_client.create_l2_inversion_inventory(dict(INVERSION, notAField=1))
    assert metadata_store_client.l2_inversions() == []


def test_session_can_be_supplied(metadata_store):
    session = requests.Session()
    client = MetadataStoreClient(metadata_store.url, TOKEN, session=session)
    assert client.session is session and client.dataset_inventory_count(proposal_ids=["pid_2_114"]) == 372
    client.close()  # not ours: left open
    assert session.post(metadata_store.url, json={"query": "{ l2Inversions { inversionId } }"},
                        headers={"Authorization": TOKEN}, timeout=5).status_code == 200
    session.close()


def test_every_field_the_scan_asks_for_is_a_field_of_the_store_s_dataset_view():
    from graphql import GraphQLList, GraphQLNonNull, get_named_type

    from scanning.emulator.server import load_schema

    view = load_schema().type_map["DatasetInventoryViewResponse"].fields
    assert set(DATASET_FIELDS) <= set(view)
    # how the schema types the new quality and product fields (the parser reads them so)
    kinds = {name: view[name].type for name in DATASET_FIELDS}
    assert str(get_named_type(kinds["polarimetricAccuracy"])) == "DistributionString"
    assert {str(get_named_type(kinds[n])) for n in ("qualityAverageFriedParameter", "qualityAveragePolarimetricAccuracy",
                                                   "datasetSize")} == {"Float"}
    assert str(kinds["hasAllStokes"]) == "Boolean" and str(kinds["targetTypes"]) == "[String!]!"
    assert isinstance(kinds["status"], GraphQLNonNull) and isinstance(kinds["targetTypes"].of_type, GraphQLList)
    assert str(kinds["productId"]) == "String!" and str(kinds["bucket"]) == "String!"  # so the emulator derives them
