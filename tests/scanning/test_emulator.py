"""The metadata-store emulator over real HTTP: filters, paging, raw records, inversions,
auth, fault injection, scale. Expected values are computed from the fixture files."""
from __future__ import annotations

import json
import statistics
import time
from datetime import datetime

import pytest
import requests

from scanning.emulator.server import (
    DATASETS,
    EXPERIMENTS,
    FIXTURE_FILES,
    GraphQLEngine,
    MetadataStore,
    classify_payload,
    load_files,
    make_server,
    synthesize_records,
)

from .conftest import TOKEN

DATASET_QUERY = """
query Datasets($f: DatasetInventoriesRequest) {
  datasetInventories(filterParams: $f) { datasetId primaryProposalId instrumentName createDate updateDate }
}"""


def post(server, query: str, variables: dict | None = None, token: str | None = TOKEN, **kw) -> requests.Response:
    headers = {} if token is None else {"Authorization": token}
    kw.setdefault("timeout", 5)
    return requests.post(server.url, json={"query": query, "variables": variables}, headers=headers, **kw)


def datasets(server, **filters) -> list[dict]:
    response = post(server, DATASET_QUERY, {"f": filters})
    assert response.status_code == 200, response.text
    body = response.json()
    assert "errors" not in body, body
    return body["data"]["datasetInventories"]


def dt(value: str) -> datetime:
    return datetime.fromisoformat(value)


# ------------------------------------------------------------------ loading


def test_loader_tells_answers_apart_by_content():
    for path in FIXTURE_FILES:
        kind, items = classify_payload(json.loads(path.read_text()))
        assert kind == (EXPERIMENTS if "experiment" in path.name else DATASETS)
        assert items and isinstance(items, list)
    assert classify_payload([{"experimentId": "e1", "experimentDescription": "x"}])[0] == EXPERIMENTS
    assert classify_payload([{"datasetId": "A"}, "garbage"])[0] == DATASETS
    assert classify_payload({"datasetInventories": []}) == (DATASETS, [])
    with pytest.raises(ValueError):
        classify_payload({"data": {"frameInventories": []}})
    with pytest.raises(ValueError):
        classify_payload(42)
    loaded = load_files(FIXTURE_FILES)
    assert (len(loaded.records), len(loaded.experiment_descriptions)) == (508, 199)


# ------------------------------------------------------------------ filters and paging


def test_filters_match_counts_from_the_files(metadata_store, fixture_records):
    assert len(datasets(metadata_store)) == len(fixture_records) == 508
    for pid in ("pid_1_118", "pid_2_114"):
        expected = {r["datasetId"] for r in fixture_records if r["primaryProposalId"] == pid}
        assert {r["datasetId"] for r in datasets(metadata_store, primaryProposalIds=[pid])} == expected
    visp = [r for r in fixture_records if r["instrumentName"] == "VISP"]
    got = datasets(metadata_store, instrumentNames=["VISP"])
    assert len(got) == len(visp) == 203 and all(r["instrumentName"] == "VISP" for r in got)
    some = [r["datasetId"] for r in fixture_records[::50]] + ["NO-SUCH-ID"]
    assert sorted(r["datasetId"] for r in datasets(metadata_store, datasetIds=some)) == sorted(some[:-1])
    # filters combine with AND
    both = datasets(metadata_store, primaryProposalIds=["pid_1_118"], instrumentNames=["VISP"])
    assert len(both) == sum(1 for r in fixture_records
                            if r["primaryProposalId"] == "pid_1_118" and r["instrumentName"] == "VISP")
    assert datasets(metadata_store, datasetIds=[]) == []  # an empty list matches nothing


def test_update_date_range_is_inclusive_and_compares_datetimes(metadata_store, fixture_records):
    dates = sorted(dt(r["updateDate"]) for r in fixture_records)
    low, high = dates[100], dates[300]
    got = datasets(metadata_store, updateDateMin=low.isoformat(), updateDateMax=high.isoformat())
    assert len(got) == 201  # both bounds included
    assert all(low <= dt(r["updateDate"]) <= high for r in got)
    assert len(datasets(metadata_store, updateDateMin=low.isoformat())) == 508 - 100
    assert len(datasets(metadata_store, updateDateMax=high.isoformat())) == 301
    # a zone-aware bound means the same instant: 12:00+02:00 == 10:00 UTC
    cut = datetime(2025, 7, 8, 10, 0, 0)
    expected = sum(1 for d in dates if d >= cut)
    assert 0 < expected < 508
    assert len(datasets(metadata_store, updateDateMin="2025-07-08T12:00:00+02:00")) == expected
    assert len(datasets(metadata_store, updateDateMin="2025-07-08T10:00:00Z")) == expected
    count = post(metadata_store, "{ datasetInventoriesRecordCount(filterParams: "
                                 "{updateDateMin: \"2025-07-08T10:00:00\"}) { recordCount } }").json()
    assert count == {"data": {"datasetInventoriesRecordCount": {"recordCount": expected}}}


def test_paging_is_one_based_and_stable(metadata_store, fixture_records):
    expected = [r["datasetId"] for r in sorted(fixture_records, key=lambda r: (dt(r["createDate"]), r["datasetId"]))]
    pages = [datasets(metadata_store, pageSize=50, pageNumber=n) for n in range(1, 12)]
    assert [len(p) for p in pages] == [50] * 10 + [8]
    assert [r["datasetId"] for p in pages for r in p] == expected  # default order: createDate
    assert datasets(metadata_store, pageSize=50, pageNumber=12) == []
    assert datasets(metadata_store, pageSize=50)[0]["datasetId"] == expected[0]  # pageNumber defaults to 1
    assert len(datasets(metadata_store, pageNumber=1)) == 508  # no pageSize: everything on page 1
    by_update = datasets(metadata_store, sortColumn="updateDate")
    assert [r["datasetId"] for r in by_update] == [
        r["datasetId"] for r in sorted(fixture_records, key=lambda r: (dt(r["updateDate"]), r["datasetId"]))]
    newest_first = datasets(metadata_store, sortColumn="-updateDate", pageSize=5)
    assert [r["datasetId"] for r in newest_first] == [r["datasetId"] for r in by_update[::-1][:5]]
    for bad in ({"pageNumber": 0, "pageSize": 10}, {"pageSize": 0}, {"sortColumn": "noSuchField"}):
        body = post(metadata_store, DATASET_QUERY, {"f": bad}).json()
        assert body["data"] is None and body["errors"], bad


def test_unimplemented_filters_and_fields_are_errors_not_silence(metadata_store):
    body = post(metadata_store, DATASET_QUERY, {"f": {"wavelengthRanges": [630.0]}}).json()
    assert body["data"] is None and "wavelengthRanges" in body["errors"][0]["message"]
    body = post(metadata_store, "{ instruments { instrumentName } }").json()
    assert body["data"] is None and "not implemented" in body["errors"][0]["message"]
    body = post(metadata_store, "{ datasetInventories { noSuchField } }").json()
    assert body["data"] is None and "noSuchField" in body["errors"][0]["message"]
    response = post(metadata_store, "{ datasetInventories { datasetId ")
    assert response.status_code == 200 and "Syntax Error" in response.json()["errors"][0]["message"]
    response = requests.post(metadata_store.url, data=b"not json", headers={"Authorization": TOKEN}, timeout=5)
    assert response.status_code == 400


def test_aliases_fragments_directives_and_mixed_root_fields(metadata_store, fixture_experiments):
    query = """
    query($withBox: Boolean!) {
      n: datasetInventoriesRecordCount(filterParams: {primaryProposalIds: ["pid_1_118"]}) { recordCount }
      first: datasetInventories(filterParams: {primaryProposalIds: ["pid_1_118"], pageSize: 2}) {
        id: datasetId ...More boundingBox @include(if: $withBox) __typename
      }
      l2Inversions { inversionId }
    }
    fragment More on DatasetInventoryViewResponse { experimentDescription primaryExperimentId productId }
    """
    body = post(metadata_store, query, {"withBox": False}).json()
    assert "errors" not in body
    data = body["data"]
    assert list(data) == ["n", "first", "l2Inversions"]
    assert data["n"] == {"recordCount": 136} and data["l2Inversions"] == []
    item = data["first"][0]
    assert set(item) == {"id", "experimentDescription", "primaryExperimentId", "productId", "__typename"}
    assert item["__typename"] == "DatasetInventoryViewResponse"
    assert item["productId"] == f"L1-{item['id']}"  # absent from the records: derived (non-null in the schema)
    # the dataset view joins the experiment description
    assert item["experimentDescription"] == fixture_experiments[item["primaryExperimentId"]]
    assert "boundingBox" in post(metadata_store, query, {"withBox": True}).json()["data"]["first"][0]


def test_experiment_descriptions(metadata_store, fixture_experiments):
    body = post(metadata_store, "{ experimentDescriptions { experimentId experimentDescription } }").json()
    got = {i["experimentId"]: i["experimentDescription"] for i in body["data"]["experimentDescriptions"]}
    assert got == fixture_experiments
    one = post(metadata_store, '{ experimentDescriptions(filterParams: {experimentId: "eid_1_118"}) '
                               '{ experimentId experimentDescriptionId } }').json()["data"]["experimentDescriptions"]
    assert len(one) == 1 and one[0]["experimentId"] == "eid_1_118"
    assert isinstance(one[0]["experimentDescriptionId"], int)


# ------------------------------------------------------------------ raw records


GARBAGE = [
    {"datasetId": "G1", "frameCount": "many", "createDate": "2020-01-01T00:00:00",
     "updateDate": "not a date", "health": [1, 2], "primaryProposalId": 7},
    {"datasetId": "G2", "createDate": None, "updateDate": "2025-07-01T00:00:00", "wavelengthMin": {"x": 1}},
    "this is not an object",
    {"noDatasetId": True, "updateDate": "2025-07-02T00:00:00"},
]


def test_malformed_records_are_served_as_stored():
    server = make_server(files=FIXTURE_FILES[:1], records=GARBAGE, token=None).start()
    try:
        query = ("{ datasetInventories { datasetId frameCount updateDate health primaryProposalId productId "
                 "wavelengthMin } }")
        body = post(server, query, token=None).json()
        assert "errors" not in body
        items = body["data"]["datasetInventories"]
        assert len(items) == 136 + len(GARBAGE)
        g1 = next(i for i in items if isinstance(i, dict) and i["datasetId"] == "G1")
        assert g1["frameCount"] == "many" and g1["updateDate"] == "not a date"
        assert g1["health"] == [1, 2] and g1["primaryProposalId"] == 7
        assert g1["wavelengthMin"] is None  # absent keys come back null …
        assert g1["productId"] == "L1-G1"  # … but productId and bucket, derived as a real store has them
        assert next(i for i in items if isinstance(i, dict) and i["datasetId"] == "G2")["wavelengthMin"] == {"x": 1}
        assert "this is not an object" in items
        # a date filter never matches an unparsable date; the others compare normally
        ids = {i.get("datasetId") if isinstance(i, dict) else i
               for i in datasets(server, updateDateMin="2025-06-30T00:00:00")}
        assert "G1" not in ids and "G2" in ids and None in ids
        assert len(datasets(server, primaryProposalIds=["pid_1_118"])) == 136
        # missing keys can be left out entirely
        server.store.omit_missing_fields = True
        g2 = next(i for i in post(server, query, token=None).json()["data"]["datasetInventories"]
                  if isinstance(i, dict) and i.get("datasetId") == "G2")
        assert "frameCount" not in g2 and g2["updateDate"] == "2025-07-01T00:00:00"
    finally:
        server.stop()


def test_records_can_be_changed_over_http(metadata_store, fixture_records):
    changed = dict(fixture_records[0], updateDate="2030-01-01T00:00:00", frameCount=1)
    response = requests.post(metadata_store.url + "_control/records",
                             json={"records": [changed, {"datasetId": "NEW1"}]},
                             headers={"Authorization": TOKEN}, timeout=5)
    assert response.status_code == 200 and response.json()["records"] == 509
    got = datasets(metadata_store, updateDateMin="2029-12-31T00:00:00")
    assert [r["datasetId"] for r in got] == [changed["datasetId"]]
    assert len(datasets(metadata_store)) == 509


# ------------------------------------------------------------------ L2 inversions


CREATE = """mutation($p: L2InversionInventory!) {
  createL2InversionInventory(createParams: $p) { inversionId datasetIds spectralLines createDate updateDate bucket }
}"""
INVERSION = {"inversionId": "inv-001", "primaryProposalId": "pid_2_114", "instrumentProgramExecutionId": "id.1.2",
             "bucket": "data", "asdfObjectKey": "pid_2_114/inv-001/inv-001.asdf",
             "datasetIds": ["AAAAA", "BBBBB"], "spectralLines": ["Fe I (630.15 nm)"]}


def test_create_and_list_l2_inversions(metadata_store):
    body = post(metadata_store, CREATE, {"p": INVERSION}).json()
    created = body["data"]["createL2InversionInventory"]
    assert created["inversionId"] == "inv-001" and created["datasetIds"] == ["AAAAA", "BBBBB"]
    assert dt(created["createDate"]) == dt(created["updateDate"])
    post(metadata_store, CREATE, {"p": dict(INVERSION, inversionId="inv-002", datasetIds=["CCCCC"])})
    listed = post(metadata_store, "{ l2Inversions { inversionId asdfObjectKey primaryProposalId } }").json()
    assert listed["data"]["l2Inversions"] == [
        {"inversionId": "inv-001", "asdfObjectKey": INVERSION["asdfObjectKey"], "primaryProposalId": "pid_2_114"},
        {"inversionId": "inv-002", "asdfObjectKey": INVERSION["asdfObjectKey"], "primaryProposalId": "pid_2_114"}]
    by_dataset = post(metadata_store, '{ l2Inversions(filterParams: {datasetIds: ["BBBBB", "ZZZ"]}) { inversionId } }')
    assert by_dataset.json()["data"]["l2Inversions"] == [{"inversionId": "inv-001"}]
    by_id = post(metadata_store, '{ l2Inversions(filterParams: {inversionId: "inv-002"}) { datasetIds } }')
    assert by_id.json()["data"]["l2Inversions"] == [{"datasetIds": ["CCCCC"]}]


def test_duplicate_and_invalid_inversions_are_refused(metadata_store):
    assert "errors" not in post(metadata_store, CREATE, {"p": INVERSION}).json()
    duplicate = post(metadata_store, CREATE, {"p": INVERSION}).json()
    assert duplicate["data"] is None and "already exists" in duplicate["errors"][0]["message"]
    missing = {k: v for k, v in INVERSION.items() if k != "bucket"}
    body = post(metadata_store, CREATE, {"p": dict(missing, inversionId="inv-x")}).json()
    assert body["data"] is None and "bucket" in body["errors"][0]["message"]
    blank = post(metadata_store, CREATE, {"p": dict(INVERSION, inversionId="  ")}).json()
    assert blank["data"] is None and "inversionId" in blank["errors"][0]["message"]
    no_datasets = post(metadata_store, CREATE, {"p": dict(INVERSION, inversionId="inv-y", datasetIds=[])}).json()
    assert no_datasets["data"] is None
    assert [i["inversionId"] for i in metadata_store.store.l2_inversions()] == ["inv-001"]


def test_inversions_can_be_deleted_outside_the_schema(metadata_store):
    post(metadata_store, CREATE, {"p": INVERSION})
    assert metadata_store.store.delete_l2_inversion("inv-001") is True
    assert metadata_store.store.delete_l2_inversion("inv-001") is False
    post(metadata_store, CREATE, {"p": INVERSION})
    url = metadata_store.url + "_control/l2inversions/delete"
    headers = {"Authorization": TOKEN}
    assert requests.post(url, json={"inversionId": "inv-001"}, headers=headers, timeout=5).json() == {"deleted": True}
    assert requests.post(url, json={"inversionId": "inv-001"}, headers=headers, timeout=5).status_code == 404
    assert post(metadata_store, "{ l2Inversions { inversionId } }").json()["data"]["l2Inversions"] == []


# ------------------------------------------------------------------ auth


def test_token_is_required_exactly(metadata_store):
    query = "{ datasetInventoriesRecordCount { recordCount } }"
    for token in (None, "wrong", f"Bearer {TOKEN}", TOKEN + " "):
        response = post(metadata_store, query, token=token)
        assert response.status_code == 401, token
        assert "Unauthorized" in response.json()["errors"][0]["message"]
    assert post(metadata_store, query).json()["data"]["datasetInventoriesRecordCount"]["recordCount"] == 508
    # the control endpoints need the token too; the health probe does not
    assert requests.post(metadata_store.url + "_faults", json={"kind": "status"}, timeout=5).status_code == 401
    assert metadata_store.faults.pending() == []
    assert requests.get(metadata_store.url + "_health", timeout=5).json() == {"ok": True, "records": 508}


def test_no_token_means_open():
    server = make_server(files=FIXTURE_FILES, token=None).start()
    try:
        assert post(server, "{ l2Inversions { inversionId } }", token=None).json() == {"data": {"l2Inversions": []}}
    finally:
        server.stop()


# ------------------------------------------------------------------ fault injection


def test_faults_from_python_follow_the_script(metadata_store):
    query = "{ datasetInventoriesRecordCount { recordCount } }"
    faults = metadata_store.faults
    faults.fail(502, count=2, skip=1)
    faults.bad_request("filterParams is wrong", json_body=True)
    faults.malformed()
    statuses = [post(metadata_store, query) for _ in range(6)]
    assert [r.status_code for r in statuses] == [200, 502, 502, 400, 200, 200]
    assert statuses[1].text == "Bad Gateway"
    assert statuses[3].json() == {"errors": [{"message": "filterParams is wrong"}]}
    with pytest.raises(ValueError):
        statuses[4].json()  # truncated JSON
    assert statuses[5].json()["data"]["datasetInventoriesRecordCount"]["recordCount"] == 508
    assert faults.pending() == [] and metadata_store.stats()["faults_served"] == 4


def test_faults_over_http_delay_and_disconnect(metadata_store):
    query = "{ datasetInventoriesRecordCount { recordCount } }"
    url = metadata_store.url + "_faults"
    headers = {"Authorization": TOKEN}
    script = {"faults": [{"kind": "delay", "delay": 0.3}, {"kind": "disconnect"},
                         {"kind": "status", "status": 500, "count": 3}]}
    pending = requests.post(url, json=script, headers=headers, timeout=5).json()["pending"]
    assert [(f["kind"], f["count"]) for f in pending] == [("delay", 1), ("disconnect", 1), ("status", 3)]
    with pytest.raises(requests.ReadTimeout):
        post(metadata_store, query, timeout=0.1)
    with pytest.raises(requests.ConnectionError):
        post(metadata_store, query)
    assert post(metadata_store, query).status_code == 500
    assert requests.post(url, json={"clear": True}, headers=headers, timeout=5).json() == {"pending": []}
    assert post(metadata_store, query).status_code == 200
    assert requests.post(url, json={"kind": "nonsense"}, headers=headers, timeout=5).status_code == 400


# ------------------------------------------------------------------ scale


def test_100k_records_page_fast_and_completely():
    base = load_files(FIXTURE_FILES)
    records = synthesize_records(base.records, 100_000)
    store = MetadataStore(records, base.experiment_descriptions)
    store.warm()
    engine = GraphQLEngine(store)
    from scanning.metadata_store import DATASET_INVENTORIES_QUERY
    seen: list[str] = []
    timings: list[float] = []
    for page_number in range(1, 102):
        started = time.perf_counter()
        answer = engine.execute(DATASET_INVENTORIES_QUERY, {"filterParams": {
            "pageSize": 1000, "pageNumber": page_number, "sortColumn": "createDate"}})
        json.dumps(answer)
        timings.append(time.perf_counter() - started)
        seen += [r["datasetId"] for r in answer["data"]["datasetInventories"]]
    assert len(seen) == len(set(seen)) == 100_000
    assert statistics.median(timings) < 0.1, timings  # measured ~15 ms (query + JSON) on 2 cores
    # an incremental window: bisect on updateDate, later pages served from the cached match list
    low = "2024-01-01T00:00:00"
    expected = sum(1 for r in records if r["updateDate"] >= low)
    count = engine.execute(f"{{ datasetInventoriesRecordCount(filterParams: {{updateDateMin: \"{low}\"}}) "
                           "{ recordCount } }")["data"]["datasetInventoriesRecordCount"]["recordCount"]
    assert count == expected
