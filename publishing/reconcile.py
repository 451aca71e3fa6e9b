"""Reconcile our published inversions with the metadata store's ``l2Inversions`` (DESIGN §9.5).

Our database is the source of truth. "Ours" are the current publications (inversions of
status published: one per Published program); "theirs" is every record ``l2Inversions``
lists. :func:`make_plan` compares them as plain data:

* **missing** — ours, absent from the store: added with ``createL2InversionInventory``;
* **extra** — in the store, not published by us: reported; removed only on request
  (``--remove-extra``);
* **superseded** — in the store, and ours but superseded by a newer publication of the
  program: removed (the store lists only the current inversion), whenever it can be;
* **differing** — on both sides with different fields: reported; made like ours only on
  request (``--update-existing``).

The store's schema (``shared/fixtures/metadata-store/schema.graphql``) has **no mutation that
deletes or updates an L2 inversion**. Removing (and updating, which is a removal followed by
a create) therefore needs a removal endpoint outside the schema, given as
``METADATA_STORE_L2_DELETE_URL`` (``POST {"inversionId": …}`` with the store's token; the
emulator has one at ``/_control/l2inversions/delete``). Without it those records are listed
in the run as "not removed" / "not updated" with that reason, for the store's operators.

Every run is a :class:`~publishing.models.ReconcileRun` row: the plan, and one action per
record with what was done (or why not). A dry run stores the plan and changes nothing.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field

import requests
from django.conf import settings
from django.utils import timezone

from inversions.errors import BackoffRetryError, DoNotRetryError, L2Error
from publishing.models import Inversion, ReconcileRun
from scanning.metadata_store import L2_INVERSION_INPUT_FIELDS

log = logging.getLogger(__name__)

NO_REMOVAL = ("the metadata store's schema has no mutation deleting an L2 inversion and "
              "METADATA_STORE_L2_DELETE_URL is not set: ask the metadata store's operators to remove it")
NO_UPDATE = ("the metadata store's schema has no mutation updating (or deleting, to re-create) an L2 inversion and "
             "METADATA_STORE_L2_DELETE_URL is not set: ask the metadata store's operators to correct it")


def _comparable(record: Mapping) -> dict:
    """The ``L2InversionInventory`` input fields of a record (lists as lists)."""
    out = {}
    for key in L2_INVERSION_INPUT_FIELDS:
        value = record.get(key)
        out[key] = list(value) if isinstance(value, (list, tuple)) else value
    return out


@dataclass
class Plan:
    """What reconciling would do. Plain data (JSON-ready with :meth:`to_dict`)."""

    ours: int
    theirs: int
    missing: list[dict] = field(default_factory=list)  # our records to add
    extra: list[dict] = field(default_factory=list)  # their records we did not publish
    differing: list[dict] = field(default_factory=list)  # {"inversionId", "ours", "theirs", "fields"}
    superseded: list[dict] = field(default_factory=list)  # their records of our superseded inversions
    in_step: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        """The plan for people (the command prints it)."""
        out = [f"ours {self.ours}, the store's {self.theirs}: {self.in_step} in step, {len(self.missing)} missing "
               f"from the store, {len(self.extra)} only in the store, {len(self.differing)} differing, "
               f"{len(self.superseded)} superseded"]
        out += [f"  add     {r['inversionId']} ({r['instrumentProgramExecutionId']})" for r in self.missing]
        out += [f"  extra   {r.get('inversionId')} ({r.get('instrumentProgramExecutionId')}){' — ' + r['known'] if r.get('known') else ''}"
                for r in self.extra]
        out += [f"  differs {d['inversionId']}: {', '.join(d['fields'])}" for d in self.differing]
        out += [f"  retire  {r.get('inversionId')}: superseded by {r.get('supersededBy')}" for r in self.superseded]
        return out


def make_plan(ours: Mapping[str, Mapping], theirs: Iterable[Mapping], *, known: Mapping[str, str] | None = None,
              superseded: Mapping[str, str] | None = None) -> Plan:
    """Compare ``ours`` (inversion id → our store record) with the store's records.

    ``known``: ids we have but did not publish (id → what it is), noted on extra records.
    ``superseded``: ids of our superseded inversions (id → the one superseding it): the
    store's records of them are planned for removal, not reported as extra.
    """
    theirs = list(theirs)
    by_id: dict[str, Mapping] = {}
    for record in theirs:
        if isinstance(record, Mapping) and isinstance(record.get("inversionId"), str):
            by_id[record["inversionId"]] = record
    plan = Plan(ours=len(ours), theirs=len(by_id))
    for inversion_id in sorted(ours):
        mine = _comparable(ours[inversion_id])
        other = by_id.get(inversion_id)
        if other is None:
            plan.missing.append(mine)
            continue
        other = _comparable(other)
        fields = [k for k in L2_INVERSION_INPUT_FIELDS if mine.get(k) != other.get(k)]
        if fields:
            plan.differing.append({"inversionId": inversion_id, "fields": fields, "ours": mine, "theirs": other})
        else:
            plan.in_step += 1
    for inversion_id in sorted(set(by_id) - set(ours)):
        record = dict(by_id[inversion_id])
        if superseded and inversion_id in superseded:
            plan.superseded.append(record | {"supersededBy": superseded[inversion_id]})
            continue
        if known and inversion_id in known:
            record["known"] = known[inversion_id]
        plan.extra.append(record)
    return plan


def our_records() -> tuple[dict[str, dict], dict[str, str], dict[str, str]]:
    """(published inversion id → its store record, unpublished id → what it is, superseded id → by which)."""
    from publishing.pipeline import store_record

    ours: dict[str, dict] = {}
    known: dict[str, str] = {}
    superseded: dict[str, str] = {}
    for inv in (Inversion.objects.select_related("program", "superseded_by").prefetch_related("files")
                .order_by("id")):
        if inv.status == Inversion.Status.PUBLISHED:
            ours[inv.inversion_id] = store_record(inv)
        elif inv.status == Inversion.Status.SUPERSEDED or (inv.store_recorded_at is not None
                                                          and inv.status == Inversion.Status.ARCHIVED):
            superseded[inv.inversion_id] = inv.superseded_by.inversion_id if inv.superseded_by else "(archived)"
        else:
            known[inv.inversion_id] = (f"known here, {inv.get_status_display().lower()}, not published "
                                       f"(program {inv.program.get_state_display()})")
    return ours, known, superseded


class Remover:
    """Removes an L2 inversion from the store through ``METADATA_STORE_L2_DELETE_URL`` (outside the schema)."""

    def __init__(self, url: str, token: str | None, timeout: float = 30.0):
        self.url, self.token, self.timeout = url, token, timeout

    def remove(self, inversion_id: str) -> None:
        headers = {"Authorization": self.token} if self.token else {}
        try:
            response = requests.post(self.url, json={"inversionId": inversion_id}, headers=headers, timeout=self.timeout)
        except requests.RequestException as exc:
            raise BackoffRetryError(f"removal endpoint unreachable: {exc}", step="reconcile") from exc
        if response.status_code >= 500:
            raise BackoffRetryError(f"removal endpoint answered HTTP {response.status_code}", step="reconcile")
        if response.status_code >= 400:
            raise DoNotRetryError(f"removal refused (HTTP {response.status_code}): {response.text[:300]}",
                                  step="reconcile")

    def replace(self, record: Mapping) -> dict | None:
        """Replace the store's record of ``record["inversionId"]`` in one request (``{"inversionId", "record"}``).

        The store swaps the record in: the old one or the new one is there at every moment.
        Returns the stored record; None when the endpoint did not say it replaced it (one that
        only deletes: the caller creates the record then).
        """
        headers = {"Authorization": self.token} if self.token else {}
        body = {"inversionId": record["inversionId"], "record": _comparable(record)}
        try:
            response = requests.post(self.url, json=body, headers=headers, timeout=self.timeout)
        except requests.RequestException as exc:
            raise BackoffRetryError(f"replacement endpoint unreachable: {exc}", step="publish") from exc
        if response.status_code >= 500:
            raise BackoffRetryError(f"replacement endpoint answered HTTP {response.status_code}", step="publish")
        if response.status_code >= 400:
            raise DoNotRetryError(f"replacement refused (HTTP {response.status_code}): {response.text[:300]}",
                                  step="publish")
        try:
            answer = response.json()
        except ValueError as exc:
            raise BackoffRetryError("replacement endpoint answered no JSON", step="publish") from exc
        if not (isinstance(answer, dict) and answer.get("replaced") is True and isinstance(answer.get("record"), dict)):
            return None
        return answer["record"]


def default_remover() -> Remover | None:
    url = settings.METADATA_STORE_L2_DELETE_URL
    return Remover(url, settings.METADATA_STORE_TOKEN) if url else None


def apply_plan(plan: Plan, client, *, update_existing: bool, remove_extra: bool,
               remover: Remover | None) -> list[dict]:
    """Carry out the plan; one action entry per record (``done`` True/False and why)."""
    actions: list[dict] = []

    def attempt(kind: str, inversion_id: str, fn) -> None:
        try:
            fn()
        except L2Error as exc:
            actions.append({"action": kind, "inversionId": inversion_id, "done": False, "error": exc.message})
        else:
            actions.append({"action": kind, "inversionId": inversion_id, "done": True})

    for record in plan.missing:
        attempt("add", record["inversionId"], lambda r=record: client.create_l2_inversion_inventory(r))
    for record in plan.extra:
        inversion_id = record.get("inversionId")
        if not remove_extra:
            actions.append({"action": "report extra", "inversionId": inversion_id, "done": False,
                            "reason": "only in the store; --remove-extra removes it"})
        elif remover is None:
            actions.append({"action": "remove", "inversionId": inversion_id, "done": False, "reason": NO_REMOVAL})
        else:
            attempt("remove", inversion_id, lambda i=inversion_id: remover.remove(i))
    for record in plan.superseded:
        inversion_id = record.get("inversionId")
        if remover is None:
            actions.append({"action": "retire", "inversionId": inversion_id, "done": False, "reason": NO_REMOVAL})
        else:
            attempt("retire", inversion_id, lambda i=inversion_id: remover.remove(i))
    for diff in plan.differing:
        inversion_id = diff["inversionId"]
        if not update_existing:
            actions.append({"action": "report difference", "inversionId": inversion_id, "done": False,
                            "reason": f"differs in {', '.join(diff['fields'])}; --update-existing replaces it"})
        elif remover is None:
            actions.append({"action": "update", "inversionId": inversion_id, "done": False, "reason": NO_UPDATE})
        else:
            def replace(i=inversion_id, ours=diff["ours"]):
                remover.remove(i)
                client.create_l2_inversion_inventory(ours, idempotent=False)
            attempt("update", inversion_id, replace)
    return actions


def run(*, dry_run: bool = False, update_existing: bool = False, remove_extra: bool = False,
        triggered_by: str = "command", client=None, remover: Remover | None = None,
        use_default_remover: bool = True) -> ReconcileRun:
    """Compare, then (unless ``dry_run``) apply; record and return the run."""
    from publishing.pipeline import store_client

    record = ReconcileRun.objects.create(triggered_by=triggered_by[:150], dry_run=dry_run,
                                         update_existing=update_existing, remove_extra=remove_extra)
    own_client = client is None
    client = client or store_client(step="reconcile")
    if remover is None and use_default_remover:
        remover = default_remover()
    try:
        ours, known, superseded = our_records()
        plan = make_plan(ours, client.l2_inversions(), known=known, superseded=superseded)
        record.plan = plan.to_dict()
        record.ours, record.theirs = plan.ours, plan.theirs
        record.missing, record.extra, record.differing = len(plan.missing), len(plan.extra), len(plan.differing)
        if not dry_run:
            record.actions = apply_plan(plan, client, update_existing=update_existing, remove_extra=remove_extra,
                                        remover=remover)
            record.added = sum(1 for a in record.actions if a["action"] == "add" and a["done"])
            record.removed = sum(1 for a in record.actions if a["action"] in ("remove", "retire") and a["done"])
            record.updated = sum(1 for a in record.actions if a["action"] == "update" and a["done"])
            failed = [a for a in record.actions if a.get("error")]
            if failed:
                record.error = "; ".join(f"{a['action']} {a['inversionId']}: {a['error']}" for a in failed)[:5000]
        record.status = ReconcileRun.Status.SUCCEEDED if not record.error else ReconcileRun.Status.FAILED
    except L2Error as exc:
        record.status = ReconcileRun.Status.FAILED
        record.error = exc.message
    finally:
        if own_client:
            client.close()
        record.finished_at = timezone.now()
        record.save()
    return record
