"""A metadata-store emulator: a real GraphQL-over-HTTP server on the store's real schema.

Plain Python (graphql-core + ``http.server``), no Django. It serves what L2 asks of the
metadata store (DESIGN §5, §9):

* ``datasetInventories(filterParams: DatasetInventoriesRequest)`` and
  ``datasetInventoriesRecordCount``: dataset records loaded from JSON files shaped like the
  real answers (``{"data": {"datasetInventories": [...]}}``);
* ``experimentDescriptions(filterParams: ExperimentDescriptionsRequest)``;
* ``createL2InversionInventory(createParams: L2InversionInventory!)`` (mutation) and
  ``l2Inversions(filterParams: L2InversionInventoriesRequest)``, kept in memory.
  The schema has no mutation that deletes an L2 inversion; the emulator offers
  :meth:`MetadataStore.delete_l2_inversion` and ``POST /_control/l2inversions/delete``.

Every other root field answers a GraphQL error "not implemented by the emulator".

**Raw mode.** Dataset records and experiment descriptions are served *as stored*: the
query is parsed and validated against the schema by graphql-core, its arguments coerced
the graphql-core way, but the answer items are built by picking the selected field names
out of the stored dicts, without output coercion. So a record with a wrong-typed or
missing value (``frameCount: "many"``, ``productId: null`` although the schema says
``String!``) reaches the client exactly as a misbehaving store would send it, instead of
graphql-core nulling the whole list. A selected field missing from a record is sent as
``null`` (``omit_missing_fields=True`` leaves the key out). A stored item that is not an
object at all is sent as is. ``experimentDescription`` missing from a record is filled
from the loaded experiment descriptions (the store's dataset view joins them); ``productId``
and ``bucket`` (non-null in the schema, so a real store always sends them) missing from a
record are derived: ``L1-<datasetId>`` and ``data`` (:data:`DERIVED_FIELDS`). A record that
holds them, even as null, is served as it is. All other root fields run through ordinary
graphql-core execution.

**Paging** follows the schema: ``pageNumber`` is 1-based ("1 is the first page",
default 1), ``pageSize`` null means all records on one page; ``pageSize < 1`` or
``pageNumber < 1`` is a GraphQL error. Order is ``sortColumn`` (schema default
``createDate``; any ``DatasetInventoryViewResponse`` field, ``-`` prefix for descending),
ties broken by ``datasetId`` then load order; missing / unparsable values sort last
(first when descending), like PostgreSQL NULLs. Date filters (``…Min``/``…Max``) are
inclusive and compare datetimes (stored strings without zone are UTC; unparsable dates
never match a date filter). An empty list filter matches nothing. A filter parameter the
emulator does not implement is a GraphQL error, never silently ignored.

**Scale.** Records are indexed once per change: one order per sort column, per-field value
indexes for the list filters, a bisectable ``updateDate`` index; the matching list of a
filter is cached (LRU), so every page after the first costs O(page size).

**HTTP.** ``POST /`` (or ``/graphql``) with ``{"query", "variables", "operationName"}``;
with a token, header ``Authorization: <token>`` must match exactly, else 401. Control
endpoints (same auth): ``GET|POST /_faults`` (fault injection, see :class:`FaultInjector`),
``POST /_control/records`` (upsert raw records: ``{"records": [...], "replace": false}``),
``POST /_control/l2inversions/delete`` (``{"inversionId": ...}``), ``GET /_stats``;
``GET /_health`` needs no token.
"""
from __future__ import annotations

import argparse
import bisect
import collections
import functools
import gc
import json
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLIncludeDirective,
    GraphQLSchema,
    GraphQLSkipDirective,
    InlineFragmentNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    build_schema,
    execute,
    get_operation_ast,
    parse,
    validate,
)
from graphql.execution.values import get_argument_values, get_directive_values, get_variable_values
from graphql.language import DocumentNode

logger = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parent / "data"
SCHEMA_PATH = DATA_DIR / "schema.graphql"
#: The bundled real answers, served by default.
FIXTURE_FILES: tuple[Path, ...] = (
    DATA_DIR / "dataset_inventories_pid_1_118.json",
    DATA_DIR / "dataset_inventories_pid_2_114.json",
    DATA_DIR / "experiment_descriptions.json",
)

DATASETS = "datasetInventories"
EXPERIMENTS = "experimentDescriptions"

# --------------------------------------------------------------------------- loading


def classify_payload(payload: Any) -> tuple[str, list]:
    """Tell a dataset answer from an experiment-descriptions answer by its content.

    Accepts ``{"data": {"datasetInventories": [...]}}``, ``{"data":
    {"experimentDescriptions": [...]}}`` (the real answers), the same without the
    ``data`` wrapper, or a bare list (experiment descriptions when its first object has
    ``experimentId`` and no ``datasetId``). Returns ``(DATASETS | EXPERIMENTS, items)``.
    """
    body = payload
    if isinstance(body, Mapping) and isinstance(body.get("data"), Mapping):
        body = body["data"]
    if isinstance(body, Mapping):
        found = [kind for kind in (DATASETS, EXPERIMENTS) if isinstance(body.get(kind), list)]
        if len(found) == 1:
            return found[0], body[found[0]]
        raise ValueError(f"expected exactly one of {DATASETS!r} / {EXPERIMENTS!r} lists, found {found}")
    if isinstance(body, list):
        first = next((item for item in body if isinstance(item, Mapping)), None)
        if first is not None and "experimentId" in first and "datasetId" not in first:
            return EXPERIMENTS, body
        return DATASETS, body
    raise ValueError(f"not a metadata-store answer: {type(payload).__name__}")


@dataclass
class LoadedData:
    records: list
    experiment_descriptions: list


def load_files(paths: Iterable[str | Path]) -> LoadedData:
    """Read answer files (see :func:`classify_payload`) into records and descriptions."""
    loaded = LoadedData([], [])
    for path in paths:
        with open(path, "rb") as handle:
            kind, items = classify_payload(json.load(handle))
        (loaded.records if kind == DATASETS else loaded.experiment_descriptions).extend(items)
    return loaded


def synthesize_records(base: Sequence[Mapping], count: int, *, seed: int = 0,
                       start: datetime = datetime(2023, 1, 1)) -> list[dict]:
    """``count`` dataset records cloned from ``base`` with new unique ids and dates.

    For benchmarks: every record keeps a real record's shape; ids, execution ids and dates
    are made unique (about 2.5 datasets per instrument program execution). Records are
    shallow copies: nested values (``health``, ``spectralLines`` …) are shared, not copied.
    """
    rng = random.Random(seed)
    out: list[dict] = []
    program = 0
    for number in range(count):
        if number == 0 or rng.random() < 0.4:
            program += 1
        record = dict(base[number % len(base)])
        created = start + timedelta(seconds=number * 37 + rng.random())
        record["datasetId"] = f"SYN{number:07d}"
        record["instrumentProgramExecutionId"] = f"ipe.syn.{program:06d}"
        record["observingProgramExecutionId"] = f"ope.syn.{program:06d}"
        record["createDate"] = created.isoformat(timespec="microseconds")
        record["updateDate"] = (created + timedelta(days=rng.randint(0, 400), seconds=rng.random())
                                ).isoformat(timespec="microseconds")
        out.append(record)
    return out


# --------------------------------------------------------------------------- schema


@functools.lru_cache(maxsize=1)
def load_schema(path: str = str(SCHEMA_PATH)) -> GraphQLSchema:
    """The store's real schema, built once per process."""
    return build_schema(Path(path).read_text(encoding="utf-8"))


def parse_store_datetime(value: Any) -> datetime | None:
    """An ISO date string as a naive UTC datetime (no zone = UTC); None when not a date."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is not None:
        try:
            parsed = parsed.astimezone(UTC).replace(tzinfo=None)
        except OverflowError:  # beyond year 1..9999 in UTC: not a date the emulator can compare
            return None
    return parsed


def _now_iso() -> str:
    return datetime.now(UTC).replace(tzinfo=None).isoformat(timespec="microseconds")


class FilterError(Exception):
    """A filter the emulator refuses (bad value or not implemented): a GraphQL error."""


# Filters of DatasetInventoriesRequest the emulator implements.
_LIST_FILTERS = {  # argument -> record field; a record matches if its value is in the list
    "datasetIds": "datasetId",
    "primaryProposalIds": "primaryProposalId",
    "instrumentNames": "instrumentName",
    "productIds": "productId",
    "primaryExperimentIds": "primaryExperimentId",
}
_EQUAL_FILTERS = ("instrumentProgramExecutionId", "observingProgramExecutionId", "bucket", "isEmbargoed")
_DATE_FIELDS = ("createDate", "updateDate", "startTime", "endTime", "embargoEndDate")
_DATE_FILTERS = {f"{field}{end}": (field, end) for field in _DATE_FIELDS for end in ("Min", "Max")}
_PAGING = ("pageSize", "pageNumber", "sortColumn")
_NO_VALUE = object()


def _sort_value(value: Any) -> tuple:
    """A total order over whatever a record holds; None and oddities last."""
    if isinstance(value, bool):
        return (1, int(value), "")
    if isinstance(value, int | float):
        return (1, value, "")
    if isinstance(value, str):
        return (2, 0, value)
    if value is None:
        return (9, 0, "")
    return (8, 0, json.dumps(value, sort_keys=True, default=str))


def _id_text(record: Any) -> str:
    value = record.get("datasetId") if isinstance(record, Mapping) else None
    return value if isinstance(value, str) else ""


# --------------------------------------------------------------------------- the store


class MetadataStore:
    """The emulator's data: raw dataset records, experiment descriptions, L2 inversions.

    Thread-safe. Records are kept as given; indexes are rebuilt lazily after a change.
    """

    def __init__(self, records: Iterable = (), experiment_descriptions: Iterable = (), *,
                 omit_missing_fields: bool = False, match_cache_size: int = 32):
        self._lock = threading.RLock()
        self.omit_missing_fields = omit_missing_fields
        self._records: list = []
        self._by_id: dict[str, int] = {}
        self._version = 0
        self._indexes: dict[Any, Any] = {}
        self._matches: collections.OrderedDict = collections.OrderedDict()
        self._match_cache_size = match_cache_size
        self._experiments: list = []
        self._experiment_text: dict[str, Any] = {}
        self._inversions: dict[str, dict] = {}
        self.upsert_records(records)
        self.set_experiment_descriptions(experiment_descriptions)

    # -- dataset records
    @classmethod
    def from_files(cls, paths: Iterable[str | Path], **kwargs: Any) -> MetadataStore:
        loaded = load_files(paths)
        return cls(loaded.records, loaded.experiment_descriptions, **kwargs)

    @property
    def record_count(self) -> int:
        return len(self._records)

    def records(self) -> list:
        """A copy of the list of stored records (load order)."""
        with self._lock:
            return list(self._records)

    def upsert_records(self, records: Iterable, *, replace: bool = False) -> int:
        """Add records; one whose ``datasetId`` is already stored replaces it. Returns count."""
        with self._lock:
            if replace:
                self._records, self._by_id = [], {}
            count = 0
            for record in records:
                count += 1
                key = _id_text(record)
                if key and key in self._by_id:
                    self._records[self._by_id[key]] = record
                    continue
                if key:
                    self._by_id[key] = len(self._records)
                self._records.append(record)
            self._changed()
            return count

    def delete_records(self, dataset_ids: Iterable[str]) -> int:
        """Remove records by ``datasetId``. Returns how many were removed."""
        with self._lock:
            doomed = {self._by_id[i] for i in dataset_ids if i in self._by_id}
            if doomed:
                kept = [r for n, r in enumerate(self._records) if n not in doomed]
                self.upsert_records(kept, replace=True)
            return len(doomed)

    def _changed(self) -> None:
        self._version += 1
        self._indexes.clear()
        self._matches.clear()

    def _index(self, key: Any, build: Callable[[], Any]) -> Any:
        found = self._indexes.get(key)
        if found is None:
            found = self._indexes[key] = build()
        return found

    def _field_values(self, field: str) -> list:
        def build() -> list:
            return [r.get(field, None) if isinstance(r, Mapping) else None for r in self._records]
        return self._index(("values", field), build)

    def _dates(self, field: str) -> list[datetime | None]:
        return self._index(("dates", field), lambda: [parse_store_datetime(v) for v in self._field_values(field)])

    def _order(self, field: str, descending: bool) -> tuple[list[int], list[int]]:
        """(indices in sort order, rank of each index) for one sort column."""
        def build() -> tuple[list[int], list[int]]:
            ids = [_id_text(r) for r in self._records]
            if field in _DATE_FIELDS:
                dates = self._dates(field)
                keys = [((0, d) if d is not None else (1, datetime.min), ids[n], n) for n, d in enumerate(dates)]
            else:
                keys = [(_sort_value(v), ids[n], n) for n, v in enumerate(self._field_values(field))]
            order = sorted(range(len(keys)), key=keys.__getitem__)
            if descending:
                order.reverse()
            rank = [0] * len(order)
            for position, index in enumerate(order):
                rank[index] = position
            return order, rank
        return self._index(("order", field, descending), build)

    def _value_index(self, field: str) -> dict:
        def build() -> dict:
            index: dict = collections.defaultdict(list)
            for n, value in enumerate(self._field_values(field)):
                try:
                    index[(type(value) is bool, value)].append(n)
                except TypeError:  # an unhashable garbage value matches no filter
                    pass
            return dict(index)
        return self._index(("by-value", field), build)

    def _date_index(self, field: str) -> tuple[list[datetime], list[int]]:
        def build() -> tuple[list[datetime], list[int]]:
            pairs = sorted((d, n) for n, d in enumerate(self._dates(field)) if d is not None)
            return [d for d, _ in pairs], [n for _, n in pairs]
        return self._index(("date-index", field), build)

    @staticmethod
    def _sort_spec(sort_column: Any) -> tuple[str, bool]:
        column = sort_column if isinstance(sort_column, str) and sort_column else "createDate"
        descending = column.startswith("-")
        field = column.lstrip("-")
        if field not in load_schema().type_map["DatasetInventoryViewResponse"].fields:  # type: ignore[union-attr]
            raise FilterError(f"sortColumn {sort_column!r} is not a field of DatasetInventoryViewResponse")
        return field, descending

    def _parse_filters(self, params: Mapping[str, Any]) -> tuple[dict, dict, dict]:
        lists: dict[str, frozenset] = {}
        equals: dict[str, Any] = {}
        dates: dict[str, list] = {}
        for name, value in params.items():
            if name in _PAGING or value is None:
                continue
            if name in _LIST_FILTERS:
                lists[_LIST_FILTERS[name]] = frozenset((type(v) is bool, v) for v in value)
            elif name in _EQUAL_FILTERS:
                equals[name] = (type(value) is bool, value)
            elif name in _DATE_FILTERS:
                field, end = _DATE_FILTERS[name]
                when = parse_store_datetime(value)
                if when is None:
                    raise FilterError(f"{name}: {value!r} is not an ISO date-time")
                bounds = dates.setdefault(field, [None, None])
                bounds[0 if end == "Min" else 1] = when
            else:
                raise FilterError(f"filter {name!r} is not implemented by the metadata-store emulator")
        return lists, equals, dates

    def match_datasets(self, params: Mapping[str, Any]) -> list[int]:
        """Indices of the records matching ``params`` (a DatasetInventoriesRequest), in order."""
        sort = self._sort_spec(params.get("sortColumn"))
        lists, equals, dates = self._parse_filters(params)
        cache_key = (sort, tuple(sorted(lists.items())), tuple(sorted(equals.items())),
                     tuple(sorted((k, tuple(v)) for k, v in dates.items())))
        with self._lock:
            found = self._matches.get(cache_key)
            if found is not None:
                self._matches.move_to_end(cache_key)
                return found
            order, rank = self._order(*sort)
            if not lists and not equals and not dates:
                found = order
            else:
                found = self._filter(lists, equals, dates, rank)
            self._matches[cache_key] = found
            while len(self._matches) > self._match_cache_size:
                self._matches.popitem(last=False)
            return found

    def _filter(self, lists: dict, equals: dict, dates: dict, rank: list[int]) -> list[int]:
        # Candidates from the most selective index, then every predicate on them.
        candidates: set[int] | list[int] | None = None
        value_filters = [(field, wanted) for field, wanted in lists.items()]
        value_filters += [(field, frozenset([wanted])) for field, wanted in equals.items()]
        for field, wanted in value_filters:
            index = self._value_index(field)
            hits = [n for key in wanted for n in index.get(key, ())]
            if candidates is None or len(hits) < len(candidates):
                candidates = hits
        if candidates is None and "updateDate" in dates:
            keys, positions = self._date_index("updateDate")
            low, high = dates["updateDate"]
            start = 0 if low is None else bisect.bisect_left(keys, low)
            stop = len(keys) if high is None else bisect.bisect_right(keys, high)
            candidates = positions[start:stop]
        if candidates is None:
            candidates = range(len(self._records))  # type: ignore[assignment]
        checks: list[Callable[[int], bool]] = []
        for field, wanted in value_filters:
            values = self._field_values(field)

            def in_set(n: int, values: list = values, wanted: frozenset = wanted) -> bool:
                try:
                    return (type(values[n]) is bool, values[n]) in wanted
                except TypeError:
                    return False
            checks.append(in_set)
        for field, (low, high) in dates.items():
            parsed = self._dates(field)

            def in_range(n: int, parsed: list = parsed, low: Any = low, high: Any = high) -> bool:
                when = parsed[n]
                return when is not None and (low is None or when >= low) and (high is None or when <= high)
            checks.append(in_range)
        hits = [n for n in set(candidates) if all(check(n) for check in checks)]
        hits.sort(key=rank.__getitem__)
        return hits

    def dataset_page(self, params: Mapping[str, Any]) -> list:
        """The raw records of one page for a DatasetInventoriesRequest."""
        page_size, page_number = params.get("pageSize"), params.get("pageNumber")
        page_number = 1 if page_number is None else page_number
        if page_size is not None and page_size < 1:
            raise FilterError(f"pageSize must be at least 1, got {page_size}")
        if page_number < 1:
            raise FilterError(f"pageNumber is 1-based, got {page_number}")
        with self._lock:
            indices = self.match_datasets(params)
            if page_size is None:
                chosen = indices if page_number == 1 else []
            else:
                start = (page_number - 1) * page_size
                chosen = indices[start:start + page_size]
            records = self._records
            return [records[n] for n in chosen]

    def warm(self) -> None:
        """Build the ``createDate`` and ``updateDate`` orders and the ``updateDate`` index now."""
        with self._lock:
            self._order("createDate", False)
            self._order("updateDate", False)
            self._date_index("updateDate")

    def dataset_count(self, params: Mapping[str, Any]) -> int:
        return len(self.match_datasets(params))

    # -- experiment descriptions
    def set_experiment_descriptions(self, items: Iterable) -> None:
        with self._lock:
            self._experiments = []
            for number, item in enumerate(items, start=1):
                if isinstance(item, Mapping) and "experimentDescriptionId" not in item:
                    item = {**item, "experimentDescriptionId": number}
                self._experiments.append(item)
            self._experiment_text = {
                item["experimentId"]: item.get("experimentDescription")
                for item in self._experiments
                if isinstance(item, Mapping) and isinstance(item.get("experimentId"), str)
            }

    def experiment_descriptions(self, params: Mapping[str, Any] | None = None) -> list:
        params = params or {}
        wanted = {k: v for k, v in params.items() if v is not None}
        with self._lock:
            return [item for item in self._experiments
                    if all(isinstance(item, Mapping) and item.get(k) == v for k, v in wanted.items())]

    def experiment_text(self, experiment_id: Any) -> Any:
        return self._experiment_text.get(experiment_id) if isinstance(experiment_id, str) else None

    # -- L2 inversions
    def create_l2_inversion(self, params: Mapping[str, Any]) -> dict:
        """Store one inversion (fields of the ``L2InversionInventory`` input)."""
        for name in ("inversionId", "primaryProposalId", "instrumentProgramExecutionId", "bucket"):
            value = params.get(name)
            if not isinstance(value, str) or not value.strip():
                raise GraphQLError(f"{name} is required and must be a non-blank string")
        for name in ("datasetIds", "spectralLines"):
            value = params.get(name)
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise GraphQLError(f"{name} is required and must be a list of strings")
        if not params["datasetIds"]:
            raise GraphQLError("datasetIds must name at least one dataset")
        with self._lock:
            if params["inversionId"] in self._inversions:
                raise GraphQLError(f"An L2 inversion with inversionId {params['inversionId']!r} already exists")
            now = _now_iso()
            record = {
                "inversionId": params["inversionId"],
                "primaryProposalId": params["primaryProposalId"],
                "instrumentProgramExecutionId": params["instrumentProgramExecutionId"],
                "bucket": params["bucket"],
                "asdfObjectKey": params.get("asdfObjectKey"),
                "datasetIds": list(params["datasetIds"]),
                "spectralLines": list(params["spectralLines"]),
                "createDate": now,
                "updateDate": now,
            }
            self._inversions[record["inversionId"]] = record
            return dict(record)

    def l2_inversions(self, params: Mapping[str, Any] | None = None) -> list[dict]:
        params = params or {}
        inversion_id, dataset_ids = params.get("inversionId"), params.get("datasetIds")
        with self._lock:
            found = list(self._inversions.values())
        if inversion_id is not None:
            found = [r for r in found if r["inversionId"] == inversion_id]
        if dataset_ids is not None:
            wanted = set(dataset_ids)
            found = [r for r in found if wanted.intersection(r["datasetIds"])]
        return [dict(r) for r in found]

    def delete_l2_inversion(self, inversion_id: str) -> bool:
        """Remove an inversion (no such mutation in the schema: emulator-only)."""
        with self._lock:
            return self._inversions.pop(inversion_id, None) is not None


# --------------------------------------------------------------------------- GraphQL


@functools.lru_cache(maxsize=256)
def _parse_and_validate(query: str) -> tuple[DocumentNode | None, tuple[GraphQLError, ...]]:
    try:
        document = parse(query)
    except GraphQLError as error:
        return None, (error,)
    return document, tuple(validate(load_schema(), document))


def _collect(selection_set: SelectionSetNode, fragments: Mapping[str, FragmentDefinitionNode],
             variables: Any, into: dict[str, list[FieldNode]] | None = None,
             seen: set[str] | None = None) -> dict[str, list[FieldNode]]:
    """Fields of a selection set by response key (fragments flattened, @skip/@include)."""
    into = {} if into is None else into
    seen = set() if seen is None else seen
    for selection in selection_set.selections:
        skip = get_directive_values(GraphQLSkipDirective, selection, variables)
        include = get_directive_values(GraphQLIncludeDirective, selection, variables)
        if (skip and skip["if"]) or (include and not include["if"]):
            continue
        if isinstance(selection, FieldNode):
            key = selection.alias.value if selection.alias else selection.name.value
            into.setdefault(key, []).append(selection)
        elif isinstance(selection, InlineFragmentNode):
            _collect(selection.selection_set, fragments, variables, into, seen)
        elif isinstance(selection, FragmentSpreadNode):
            name = selection.name.value
            if name not in seen and name in fragments:
                seen.add(name)
                _collect(fragments[name].selection_set, fragments, variables, into, seen)
    return into


def _error(message: str, nodes: Any = None, path: list | None = None) -> dict:
    return GraphQLError(message, nodes=nodes, path=path).formatted  # type: ignore[return-value]


class GraphQLEngine:
    """Executes GraphQL requests against a :class:`MetadataStore`."""

    RAW_FIELDS = (DATASETS, EXPERIMENTS)

    def __init__(self, store: MetadataStore, schema: GraphQLSchema | None = None):
        self.store = store
        self.schema = schema or load_schema()
        self.root = {
            "datasetInventoriesRecordCount": self._record_count,
            "l2Inversions": self._l2_inversions,
            "createL2InversionInventory": self._create_l2_inversion,
        }

    # graphql-core resolvers (root fields executed the ordinary way)
    def _record_count(self, info: Any, filterParams: Mapping | None = None) -> dict:
        try:
            return {"recordCount": self.store.dataset_count(filterParams or {})}
        except FilterError as error:
            raise GraphQLError(str(error)) from error

    def _l2_inversions(self, info: Any, filterParams: Mapping | None = None) -> list:
        return self.store.l2_inversions(filterParams)

    def _create_l2_inversion(self, info: Any, createParams: Mapping) -> dict:
        return self.store.create_l2_inversion(createParams)

    def _resolve(self, source: Any, info: Any, **args: Any) -> Any:
        if info.parent_type in (self.schema.query_type, self.schema.mutation_type) and \
                info.field_name not in self.root and not info.field_name.startswith("__"):
            raise GraphQLError(f"{info.parent_type.name}.{info.field_name} is not implemented "
                               "by the metadata-store emulator")
        value = source.get(info.field_name) if isinstance(source, Mapping) else getattr(source, info.field_name, None)
        return value(info, **args) if callable(value) else value

    def execute(self, query: Any, variables: Any = None, operation_name: Any = None) -> dict:
        """One GraphQL request → the answer dict (``data`` and/or ``errors``)."""
        if not isinstance(query, str):
            return {"errors": [_error("The request must contain a 'query' string")]}
        if variables is not None and not isinstance(variables, Mapping):
            return {"errors": [_error("'variables' must be an object")]}
        document, errors = _parse_and_validate(query)
        if errors:
            return {"data": None, "errors": [e.formatted for e in errors]}
        assert document is not None
        operation = get_operation_ast(document, operation_name if isinstance(operation_name, str) else None)
        if operation is None:
            return {"data": None, "errors": [_error("Unknown operation or operation name required")]}
        if operation.operation is not OperationType.QUERY:
            return self._execute_graphql(document, variables, operation_name)
        coerced = get_variable_values(self.schema, operation.variable_definitions or (), dict(variables or {}))
        if isinstance(coerced, list):
            return {"data": None, "errors": [e.formatted for e in coerced]}
        fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
        fields = _collect(operation.selection_set, fragments, coerced)
        if not any(nodes[0].name.value in self.RAW_FIELDS for nodes in fields.values()):
            return self._execute_graphql(document, variables, operation_name)
        data: dict[str, Any] = {}
        out_errors: list[dict] = []
        others = [nodes for nodes in fields.values() if nodes[0].name.value not in self.RAW_FIELDS]
        executed: dict = {}
        if others:
            sub = OperationDefinitionNode(
                operation=operation.operation, name=operation.name,
                variable_definitions=operation.variable_definitions, directives=operation.directives,
                selection_set=SelectionSetNode(selections=tuple(n for nodes in others for n in nodes)))
            partial = self._execute_graphql(
                DocumentNode(definitions=(sub, *fragments.values())), variables, None)
            executed = partial.get("data") or {}
            out_errors.extend(partial.get("errors", []))
            if partial.get("data") is None:
                return {"data": None, "errors": out_errors}
        failed = False
        for key, nodes in fields.items():
            if nodes[0].name.value not in self.RAW_FIELDS:
                data[key] = executed.get(key)
                continue
            try:
                data[key] = self._raw_field(key, nodes, fragments, coerced)
            except GraphQLError as error:
                out_errors.append(error.formatted)
                failed = True  # the raw fields are non-null lists: the error nulls data
        answer: dict[str, Any] = {"data": None if failed else data}
        if out_errors:
            answer["errors"] = out_errors
        return answer

    def _execute_graphql(self, document: DocumentNode, variables: Any, operation_name: Any) -> dict:
        result = execute(self.schema, document, root_value=self.root, variable_values=variables,
                         operation_name=operation_name, field_resolver=self._resolve)
        answer: dict[str, Any] = {"data": result.data}
        if result.errors:
            answer["errors"] = [e.formatted for e in result.errors]
        return answer

    def _raw_field(self, key: str, nodes: list[FieldNode], fragments: Mapping, variables: Any) -> list:
        name = nodes[0].name.value
        field_def = self.schema.query_type.fields[name]  # type: ignore[union-attr]
        try:
            params = get_argument_values(field_def, nodes[0], variables).get("filterParams") or {}
        except GraphQLError as error:
            raise GraphQLError(error.message, nodes=nodes, path=[key]) from error
        selected: dict[str, str] = {}
        for node in nodes:
            if node.selection_set:
                for sub_key, sub_nodes in _collect(node.selection_set, fragments, variables).items():
                    selected[sub_key] = sub_nodes[0].name.value
        try:
            if name == DATASETS:
                items = self.store.dataset_page(params)
                type_name = "DatasetInventoryViewResponse"
            else:
                items = self.store.experiment_descriptions(params)
                type_name = "ExperimentDescriptionResponse"
        except FilterError as error:
            raise GraphQLError(str(error), nodes=nodes, path=[key]) from error
        return [self._pick(item, selected, type_name) for item in items]

    def _pick(self, item: Any, selected: Mapping[str, str], type_name: str) -> Any:
        if not isinstance(item, Mapping):
            return item
        out: dict[str, Any] = {}
        omit = self.store.omit_missing_fields
        for key, field in selected.items():
            if field in item:
                out[key] = item[field]
            elif field == "__typename":
                out[key] = type_name
            elif field == "experimentDescription" and type_name == "DatasetInventoryViewResponse":
                out[key] = self.store.experiment_text(item.get("primaryExperimentId"))
            elif field in DERIVED_FIELDS and type_name == "DatasetInventoryViewResponse":
                out[key] = DERIVED_FIELDS[field](item)
            elif not omit:
                out[key] = None
        return out


def _derived_product_id(item: Mapping) -> Any:
    dataset_id = item.get("datasetId")
    return f"L1-{dataset_id}" if isinstance(dataset_id, str) else None


#: Non-null fields of DatasetInventoryViewResponse a real store always sends and the fixtures lack:
#: served derived from the record (``productId`` ``L1-<datasetId>``, ``bucket`` ``data``), not null.
DERIVED_FIELDS: dict[str, Callable[[Mapping], Any]] = {
    "productId": _derived_product_id,
    "bucket": lambda item: "data",
}


# --------------------------------------------------------------------------- faults


FAULT_KINDS = ("pass", "status", "delay", "malformed", "disconnect")


@dataclass
class Fault:
    """One scripted answer. ``kind``: ``pass`` (answer normally), ``status`` (HTTP
    ``status`` with ``message`` as body; JSON ``{"errors":[{"message"}]}`` when ``json_body``),
    ``delay`` (sleep ``delay`` s, then answer normally), ``malformed`` (200 with a
    truncated JSON body), ``disconnect`` (close the connection without an answer)."""

    kind: str
    count: int = 1
    status: int = 503
    delay: float = 0.0
    message: str = "Service Unavailable"
    json_body: bool = False

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r} (one of {', '.join(FAULT_KINDS)})")
        if not isinstance(self.count, int) or self.count < 1:
            raise ValueError("count must be a positive integer")
        if self.kind == "status" and not 100 <= int(self.status) <= 599:
            raise ValueError("status must be an HTTP status code")


class FaultInjector:
    """A thread-safe script of faults for the next GraphQL requests, consumed in order.

    ``add("status", count=3, status=502)`` makes the next 3 requests answer 502;
    ``skip=2`` first lets 2 requests through. Faults added later queue behind earlier
    ones. Control endpoints (``/_faults`` …) never consume faults.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._script: collections.deque[Fault] = collections.deque()
        self.served = 0

    def add(self, kind: str, count: int = 1, *, skip: int = 0, **options: Any) -> None:
        faults = ([Fault("pass", count=skip)] if skip else []) + [Fault(kind, count=count, **options)]
        with self._lock:
            self._script.extend(faults)

    def fail(self, status: int = 503, count: int = 1, *, message: str | None = None, **kw: Any) -> None:
        self.add("status", count, status=status, message=message or HTTPStatus(status).phrase, **kw)

    def bad_request(self, message: str, count: int = 1, **kw: Any) -> None:
        self.add("status", count, status=400, message=message, **kw)

    def delay(self, seconds: float, count: int = 1, **kw: Any) -> None:
        self.add("delay", count, delay=seconds, **kw)

    def malformed(self, count: int = 1, **kw: Any) -> None:
        self.add("malformed", count, **kw)

    def disconnect(self, count: int = 1, **kw: Any) -> None:
        self.add("disconnect", count, **kw)

    def clear(self) -> None:
        with self._lock:
            self._script.clear()

    def pending(self) -> list[dict]:
        with self._lock:
            return [asdict(f) for f in self._script]

    def take(self) -> Fault | None:
        """The fault for the request being served (None: answer normally)."""
        with self._lock:
            if not self._script:
                return None
            head = self._script[0]
            if head.count <= 1:
                self._script.popleft()
            else:
                head.count -= 1
        if head.kind == "pass":
            return None
        self.served += 1
        return head


# --------------------------------------------------------------------------- HTTP


MALFORMED_BODY = b'{"data": {"datasetInventories": [{"datasetId": "BLKGA", "frameCount": 17'


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse connections
    server: EmulatorServer
    timeout = 120  # an idle keep-alive connection is closed after this

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        logger.debug("%s %s", self.address_string(), format % args)

    # -- helpers
    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, status: int, payload: Any) -> None:
        self._send(status, json.dumps(payload, default=str).encode())

    def _send_error_json(self, status: int, message: str) -> None:
        self._send_json(status, {"errors": [{"message": message}]})

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _authorized(self) -> bool:
        token = self.server.token
        if token is None or self.headers.get("Authorization") == token:
            return True
        self._send_error_json(401, "Unauthorized: missing or wrong Authorization header")
        return False

    # -- verbs
    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        if path == "/_health":
            self._send_json(200, {"ok": True, "records": self.server.store.record_count})
        elif path == "/_faults":
            if self._authorized():
                self._send_json(200, {"pending": self.server.faults.pending()})
        elif path == "/_stats":
            if self._authorized():
                self._send_json(200, self.server.stats())
        else:
            self._send_error_json(405 if path in ("/", "/graphql") else 404,
                                  "Use POST with a JSON body" if path in ("/", "/graphql") else "Not found")

    def do_POST(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        if path in ("/", "/graphql"):
            self._graphql()
            return
        body = self._read_body()
        if path not in ("/_faults", "/_control/records", "/_control/l2inversions/delete"):
            self._send_error_json(404, "Not found")
            return
        if not self._authorized():
            return
        try:
            payload = json.loads(body or b"{}")
            if not isinstance(payload, dict):
                raise ValueError("expected a JSON object")
            if path == "/_faults":
                self._control_faults(payload)
            elif path == "/_control/records":
                count = self.server.store.upsert_records(payload.get("records") or [],
                                                         replace=bool(payload.get("replace")))
                self._send_json(200, {"upserted": count, "records": self.server.store.record_count})
            else:
                deleted = self.server.store.delete_l2_inversion(str(payload.get("inversionId")))
                self._send_json(200 if deleted else 404, {"deleted": deleted})
        except (ValueError, TypeError, KeyError) as error:
            self._send_error_json(400, f"bad control request: {error}")

    def _control_faults(self, payload: dict) -> None:
        faults = self.server.faults
        if payload.get("clear"):
            faults.clear()
        for spec in payload.get("faults") or ([payload] if "kind" in payload else []):
            if not isinstance(spec, dict):
                raise ValueError("a fault is a JSON object")
            spec = dict(spec)
            faults.add(spec.pop("kind"), int(spec.pop("count", 1)), skip=int(spec.pop("skip", 0)), **spec)
        self._send_json(200, {"pending": faults.pending()})

    def _graphql(self) -> None:
        body = self._read_body()
        self.server.count_request()
        fault = self.server.faults.take()
        if fault is not None:
            if fault.kind == "disconnect":
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return
            if fault.kind == "status":
                if fault.json_body:
                    self._send_error_json(fault.status, fault.message)
                else:
                    self._send(fault.status, fault.message.encode(), "text/plain; charset=utf-8")
                return
            if fault.kind == "malformed":
                self._send(200, MALFORMED_BODY)
                return
            if fault.kind == "delay":
                time.sleep(fault.delay)
        if not self._authorized():
            return
        try:
            request = json.loads(body)
        except ValueError:
            self._send_error_json(400, "Unable to parse request body as JSON")
            return
        if not isinstance(request, dict):
            self._send_error_json(400, "The request body must be a JSON object")
            return
        answer = self.server.engine.execute(request.get("query"), request.get("variables"),
                                            request.get("operationName"))
        self._send(200 if "data" in answer else 400, json.dumps(answer, default=str).encode())


class EmulatorServer(ThreadingHTTPServer):
    """The HTTP server; ``.store``, ``.faults``, ``.engine``, ``.url``, ``.token``."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], store: MetadataStore, token: str | None = None):
        super().__init__(address, _Handler)
        self.store = store
        self.token = token
        self.faults = FaultInjector()
        self.engine = GraphQLEngine(store)
        self._stats_lock = threading.Lock()
        self.requests = 0
        self.connections = 0
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}/"

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._stats_lock:
            self.connections += 1
        super().process_request(request, client_address)

    def count_request(self) -> None:
        with self._stats_lock:
            self.requests += 1

    def stats(self) -> dict:
        return {"graphql_requests": self.requests, "connections": self.connections,
                "faults_served": self.faults.served,
                "records": self.store.record_count}

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys
        error = sys.exc_info()[1]
        if isinstance(error, BrokenPipeError | ConnectionResetError | ConnectionAbortedError | TimeoutError):
            return  # the client went away (e.g. it timed out during a "delay" fault)
        super().handle_error(request, client_address)

    def start(self) -> EmulatorServer:
        """Serve in a daemon thread (tests)."""
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"metadata-store-emulator:{self.server_address[1]}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop a server started with :meth:`start` and release its socket."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self.server_close()


def make_server(host: str = "127.0.0.1", port: int = 0, files: Iterable[str | Path] = (),
                token: str | None = None, *, records: Iterable | None = None,
                experiment_descriptions: Iterable | None = None,
                store: MetadataStore | None = None, omit_missing_fields: bool = False,
                freeze_gc: bool = False) -> EmulatorServer:
    """A bound (not yet serving) emulator. ``port=0`` picks a free port (see ``.url``).

    Data: ``store`` if given, else the answer ``files`` plus ``records`` /
    ``experiment_descriptions`` given in Python. Indexes are built before returning.
    ``freeze_gc`` moves everything loaded out of the garbage collector's sight
    (``gc.freeze()``): with 100,000 records a full collection otherwise stalls a request
    by ~200 ms now and then. Meant for a process of its own (``run`` sets it).
    """
    if store is None:
        loaded = load_files(files)
        store = MetadataStore([*loaded.records, *(records or ())],
                              [*loaded.experiment_descriptions, *(experiment_descriptions or ())],
                              omit_missing_fields=omit_missing_fields)
    load_schema()
    store.warm()
    if freeze_gc:
        gc.collect()
        gc.freeze()
    return EmulatorServer((host, port), store, token)


def run(host: str, port: int, files: Iterable[str | Path], token: str | None = None,
        *, announce: Callable[[str], None] = print) -> None:
    """Serve until interrupted (Ctrl-C)."""
    server = make_server(host, port, files, token, freeze_gc=True)
    announce(f"metadata-store emulator on {server.url} ({server.store.record_count} datasets, "
             f"{'token required' if token else 'no token'})")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the metadata-store emulator.")
    parser.add_argument("files", nargs="*", default=[str(p) for p in FIXTURE_FILES])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--token", default=None)
    args = parser.parse_args(argv)
    run(args.host, args.port, args.files, args.token)


if __name__ == "__main__":
    main()
