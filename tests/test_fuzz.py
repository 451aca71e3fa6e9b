"""Fuzz (issue 13, DESIGN §14): every URL pattern, every form field, generated input — never a 5xx.

Every pattern of the URL configuration (the admin's included) gets requests built by
Hypothesis: its converters filled with real ids or generated text (NUL, lone surrogates,
dates at the ends of the calendar, offsets PostgreSQL refuses …), query parameters and form
fields named after every field of the project's forms, JSON bodies for the API, GET and POST,
as an admin (who may do everything) and sometimes as HTMX. An answer of 500 or more, or an
exception out of a view, fails the test with the request that caused it. Bounded: a fixed
number of examples per pattern, about a minute for the whole file on the 2-core machine.
"""
from __future__ import annotations

import json
import re
from urllib.parse import quote

import pytest
from django.contrib.auth.forms import AuthenticationForm
from django.db import transaction
from django.test import Client
from django.urls import URLResolver, get_resolver
from django.urls.resolvers import RegexPattern, RoutePattern
from django.utils import timezone
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from inversions import admin as program_admin
from inversions.forms import PriorityForm, ProgramFilterForm, ReportInvertedForm
from inversions.models import WorkOrder
from inversions.states import State
from publishing.models import ApiToken, Inversion
from scanning.models import Scan
from tests.dashboard.conftest import build_program

pytestmark = pytest.mark.django_db

#: examples per URL pattern: ours (the dashboard, the API, the probes) and the admin's
OUR_EXAMPLES, ADMIN_EXAMPLES = 12, 2


def url_patterns(resolver=None, prefix=()):
    """(the patterns from the root to it, the URLPattern) for every pattern of the URL configuration."""
    resolver = resolver or get_resolver()
    for p in resolver.url_patterns:
        if isinstance(p, URLResolver):
            yield from url_patterns(p, prefix + (p.pattern,))
        else:
            yield prefix + (p.pattern,), p


def pattern_id(parts) -> str:
    return "".join(str(p) for p in parts) or "/"


PATTERNS = list(url_patterns())
OURS = [(parts, p) for parts, p in PATTERNS if not str(parts[0]).startswith("admin/")]
ADMIN = [(parts, p) for parts, p in PATTERNS if str(parts[0]).startswith("admin/")]

# --- what the requests are made of -----------------------------------------------------------------
NASTY = [
    "", " ", "0", "-1", "1", "2", "99999999999999999999", "1e309", "nan", "-0", "yesterday", "..", "../..", "/",
    "//evil.example/", "https://evil.example/", "javascript:alert(1)", "%00",
    "%", "'", '"', "<script>alert(1)</script>", "9999-12-31", "0001-01-01", "0000-00-00", "2024-02-30",
    "0050-06-12T10:02:22+20:39", "2024-01-31T12:00:00Z", "9999-12-31T23:59:59-01:00", "true", "false", "on",
    "queued", "working", "preprocessed", "error", "-observed", "observed", "Fe I 630.15", "🌞", "\u202e", "\ufffd",
    "x" * 3000, "1" * 400, "/inversions/run-1", "science-cluster", "abcdef1",
]
BAD_CHARACTERS = ["\x00", "a\x00b", "\ud800", "x\udfffy"]
#: text without NUL: NUL and lone surrogates come from BAD_CHARACTERS, now and then, else (400 for
#: them, at once) they would hide the rest of nearly every request
TEXT = st.text(st.characters(exclude_characters="\x00"), max_size=30)
GET_PARAMS = sorted({*ProgramFilterForm.base_fields, "page", "page_size", "updated_since", "state", "instrument",
                     "proposal", "program", "dataset", "published", "superseded", "q", "o", "p", "all", "e",
                     "_changelist_filters", "next", "_popup", "_to_field"})
FORM_FIELDS = sorted({
    *PriorityForm.base_fields, *ReportInvertedForm.base_fields, *ProgramFilterForm.base_fields,
    *program_admin.CorrectStateForm.base_fields, *program_admin.PriorityForm.base_fields,
    *AuthenticationForm.base_fields, "next", "from", "to", "force", "full", "inversion", "action", "_selected_action",
    "apply", "index", "select_across", "csrfmiddlewaretoken", "_save", "_continue", "reports_for_any_claimant",
})
JSON_FIELDS = ["collection", "path", "software_commit", "dataset_ids", "notes", "program", "token", "client"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**30), 10**30) | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(NASTY + BAD_CHARACTERS) | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)


def enc(text: str, safe: str = "") -> str:
    """Percent-encoded bytes of ``text``; lone surrogates become the (invalid) bytes they stand for."""
    return quote(text.encode("utf-8", "surrogatepass"), safe=safe)


def segment(ids: list[str], *, slashes: bool = False) -> st.SearchStrategy[str]:
    text = TEXT if slashes else TEXT.filter(lambda s: "/" not in s)
    nasty = st.sampled_from([n for n in NASTY if slashes or "/" not in n])
    return st.one_of(*[st.sampled_from(ids)] * 6, nasty, nasty, text, text, st.sampled_from(BAD_CHARACTERS))


CONVERTER = re.compile(r"<(?:(?P<conv>[^>:]+):)?(?P<name>[^>]+)>")


def path_strategy(parts, ids: dict[str, list[str]]) -> st.SearchStrategy[str]:
    """A path matching the patterns ``parts`` (from the root): real ids or generated values in the converters."""
    pieces = []
    for part in parts:
        if isinstance(part, RoutePattern):
            route, at = str(part), 0
            for match in CONVERTER.finditer(route):
                pieces.append(st.just(route[at:match.start()]))
                conv, name = match["conv"] or "str", match["name"]
                if conv == "int":
                    pieces.append(st.one_of(st.sampled_from(ids["int"]), st.integers(0, 10**20).map(str)))
                else:
                    pieces.append(segment(ids.get(name, ids["str"]), slashes=conv == "path")
                                  .map(lambda v, conv=conv: enc(v, safe="/" if conv == "path" else "")))
                at = match.end()
            pieces.append(st.just(route[at:]))
        elif isinstance(part, RegexPattern):
            regex = part.regex.pattern.removeprefix("^").removesuffix("$").removesuffix("\\Z")
            pieces.append(st.from_regex(regex, fullmatch=True, alphabet=st.characters(codec="utf-8"))
                          .map(lambda v: enc(v, safe="/")))
        else:  # a LocalePrefixPattern or the like: none here today
            pieces.append(st.just(str(part)))
    return st.tuples(*pieces).map(lambda bits: "/" + "".join(bits))


VALUE = st.one_of(st.sampled_from(NASTY), st.sampled_from(NASTY), TEXT, st.integers(-(10**20), 10**20).map(str))


def encoded_pairs(names: list[str]) -> st.SearchStrategy[str]:
    """``a=1&b=2``: any of ``names`` (each maybe, maybe twice) and a made-up key or two, with generated values."""
    known = st.fixed_dictionaries({}, optional={name: st.lists(VALUE, min_size=1, max_size=2) for name in names})
    other = st.lists(st.tuples(TEXT, VALUE), max_size=2)
    return st.tuples(known, other).map(lambda kv: "&".join(
        [f"{enc(k)}={enc(v)}" for k, values in kv[0].items() for v in values]
        + [f"{enc(k)}={enc(v)}" for k, v in kv[1]]))


# --- the data the requests find -------------------------------------------------------------------
@pytest.fixture
def world(admin_user, make_user, django_user_model):
    """Programs in every state (with real datasets and history), an inversion, work orders, a scan, tokens."""
    han = make_user("han", "science")
    walker = django_user_model.objects.get_or_create(username="worker-bee")[0]
    programs = {state: build_program(state, walker=walker, claimant=admin_user if state == State.WORKING else None)
                for state in (State.DISCOVERED, State.INVERTIBLE, State.NOT_INVERTIBLE, State.PREPROCESSED,
                              State.QUEUED, State.WORKING, State.INVERTED, State.PUBLISHED, State.ERROR)}
    build_program(State.WORKING, walker=walker, claimant=han)
    now = timezone.now()
    inversion = Inversion.objects.create(
        inversion_id="L2FUZZ00001", program=programs[State.PUBLISHED], software_commit="abcdef1",
        dataset_ids=["A"], raster_steps=1, reported_collection="science-cluster", reported_path="/x",
        scratch_path="/l2/x/", reported_by="han", reported_at=now, store_recorded_at=now, bucket="data")
    orders = [WorkOrder.objects.create(program=programs[State.PREPROCESSED], kind=WorkOrder.Kind.PREPROCESS,
                                       status=WorkOrder.Status.COMPLETED),
              WorkOrder.objects.create(program=programs[State.INVERTED], kind=WorkOrder.Kind.GENERATE)]
    scan = Scan.objects.create(status=Scan.Status.SUCCEEDED, finished_at=now)
    _, raw = ApiToken.issue(name="fuzz-client", user=admin_user, reports_for_any_claimant=True)
    ipeids = [p.instrument_program_execution_id for p in programs.values()]
    numbers = [str(n) for n in {admin_user.pk, han.pk, scan.pk, inversion.pk, *(o.pk for o in orders),
                                *(p.pk for p in programs.values())}]
    client = Client()
    client.force_login(admin_user)
    return {
        "admin": admin_user,
        "client": client,
        "token": raw,
        "ids": {"str": ipeids + [inversion.inversion_id], "ipeid": ipeids, "inversion_id": [inversion.inversion_id],
                "name": ["continuum.png", "ncp.png", "x.png"], "object_id": numbers, "content_type_id": numbers,
                "id": numbers, "url": ["", "x/", "inversions/"], "int": numbers},
    }


@pytest.fixture(autouse=True)
def no_broker(monkeypatch):
    """Tasks are recorded, never sent: the fuzz test drives the web layer only."""
    import celery.app.task

    class Sent:
        id = "fuzz"

    monkeypatch.setattr(celery.app.task.Task, "apply_async", lambda *args, **kwargs: Sent())


def request_strategy(parts, ids, methods):
    is_api = str(parts[0]).startswith("api/")
    body = st.one_of(
        encoded_pairs(FORM_FIELDS).map(lambda b: ("application/x-www-form-urlencoded", b)),
        st.fixed_dictionaries({}, optional={k: json_values for k in JSON_FIELDS})
        .map(lambda d: ("application/json", json.dumps(d))),
        json_values.map(lambda v: ("application/json", json.dumps(v))),
        st.binary(max_size=40).map(lambda b: ("application/json", b)),
    ) if is_api else encoded_pairs(FORM_FIELDS).map(lambda b: ("application/x-www-form-urlencoded", b))
    return st.fixed_dictionaries({
        "method": st.sampled_from(methods),
        "path": path_strategy(parts, ids),
        "query": encoded_pairs(GET_PARAMS),
        "body": body,
        "htmx": st.booleans(),
        "auth": st.sampled_from(["session", "session", "token", "bad-token"]) if is_api else st.just("session"),
        # now and then a NUL or a lone surrogate in the query or the body (the path has its own)
        "poison": st.one_of(*[st.none()] * 6, st.tuples(st.sampled_from(["query", "body"]),
                                                        st.sampled_from(FORM_FIELDS), st.sampled_from(BAD_CHARACTERS))),
    })


def send(world, req):
    client = world["client"]
    if "_auth_user_id" not in client.session:  # (logged out by an example)
        client.force_login(world["admin"])
    headers = {"HTTP_HX_REQUEST": "true"} if req["htmx"] else {}
    if req["auth"] == "token":
        headers["HTTP_AUTHORIZATION"] = f"Bearer {world['token']}"
    elif req["auth"] == "bad-token":
        headers["HTTP_AUTHORIZATION"] = "Bearer l2t_nope"
    query, (content_type, data) = req["query"], req["body"]
    if req["poison"]:
        where, key, bad = req["poison"]
        if where == "query" or content_type != "application/x-www-form-urlencoded":
            query = "&".join(filter(None, [query, f"{enc(key)}={enc(bad)}"]))
        else:
            data = "&".join(filter(None, [data, f"{enc(key)}={enc(bad)}"]))
    url = req["path"] + ("?" + query if query else "")
    note(f"{req['method']} {url} {(content_type, data) if req['method'] == 'POST' else ''} {headers}")
    if req["method"] == "POST":
        return client.post(url, data, content_type=content_type, **headers)
    return client.generic(req["method"], url, **headers)


def plain_path(parts, ids) -> str | None:
    """The pattern's path with the first known id in each converter (None for regular expressions)."""
    bits = []
    for part in parts:
        if not isinstance(part, RoutePattern):
            return None
        bits.append(CONVERTER.sub(lambda m: ids.get(m["name"], ids["int" if m["conv"] == "int" else "str"])[0],
                                  str(part)))
    return "/" + "".join(bits)


def allowed_methods(world, parts) -> list[str]:
    """GET, POST and HEAD, weighted to what the pattern allows (its 405 answer says: ``Allow``), so that
    most examples reach the view; the others still come now and then."""
    path = plain_path(parts, world["ids"])
    if path is None:
        return ["GET", "POST", "HEAD"]
    allowed = None
    with transaction.atomic():  # (the probe changes nothing the examples find)
        for method in ("GET", "POST"):
            response = world["client"].generic(method, path)
            if response.status_code == 405 and response.get("Allow"):
                allowed = [m.strip() for m in response["Allow"].split(",") if m.strip() in ("GET", "POST", "HEAD")]
                break
        transaction.set_rollback(True)
    return allowed * 6 + ["GET", "POST", "HEAD"] if allowed else ["GET", "GET", "POST", "POST", "HEAD"]


def fuzz(world, patterns, examples: int):
    for parts, _ in patterns:
        @settings(max_examples=examples, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
        @given(req=request_strategy(parts, world["ids"], allowed_methods(world, parts)))
        def check(req):
            note(f"pattern {pattern_id(parts)}")
            with transaction.atomic():  # an error rolls back to here: the next example starts clean
                response = send(world, req)
            allowed = (503,) if pattern_id(parts) == "readyz" else ()  # the broker really is down: its answer
            assert response.status_code < 500 or response.status_code in allowed, (
                response.status_code, response.content[:300])
            if str(parts[0]).startswith("api/") and response.status_code >= 400:
                assert response["Content-Type"] == "application/json", response.content[:300]

        check()


def test_no_5xx_anywhere_on_our_pages_and_the_api(world):
    fuzz(world, OURS, OUR_EXAMPLES)


def test_no_5xx_anywhere_in_the_admin(world):
    fuzz(world, ADMIN, ADMIN_EXAMPLES)


def test_the_fuzz_covers_every_pattern_and_form():
    assert len(OURS) + len(ADMIN) == len(PATTERNS) > 100
    assert {"api/v1/programs/<str:ipeid>/inverted", "programs/<str:ipeid>/quicklook/<int:order_id>/<str:name>",
            "scans/start"} <= {pattern_id(parts) for parts, _ in OURS}
    assert {"notes", "priority", "to_state", "force", "claimant", "next", "observed_to", "password"} <= set(FORM_FIELDS)
