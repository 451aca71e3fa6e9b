"""The program list's rows, built in Python by ``{% program_rows %}``, show what the template showed.

The reference below is the row markup the page had when the template engine built it (with the
state-badge include inlined); every kind of row must come out the same, byte for byte.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from django.db import connection
from django.template import engines
from django.test.utils import CaptureQueriesContext
from django.utils import timezone as dj_timezone

from inversions import selectors
from inversions.models import ObservingProgram
from inversions.states import State
from inversions.templatetags.program_list import options, program_rows, sort_headers
from inversions.selectors import CHANGED_FLAG_STATES

pytestmark = pytest.mark.django_db

REFERENCE = """{% for p in programs %}<tr>
    <td class="ident"><a href="{% url 'program-detail' p.instrument_program_execution_id %}">{{ p.instrument_program_execution_id }}</a>
      {% if p.description_head %}<div class="desc small muted">{{ p.description_head|truncatechars:110 }}</div>{% endif %}</td>
    <td>{{ p.instrument_name }}</td>
    <td>{{ p.primary_proposal_id }}<div class="small muted">{{ p.primary_experiment_id }}</div></td>
    <td class="lines">{% for line in p.spectral_lines %}<span class="chip">{{ line }}</span>{% empty %}<span class="muted">—</span>{% endfor %}</td>
    <td class="nowrap">{{ p.start_time|date:"Y-m-d H:i"|default:"—" }}</td>
    <td class="num">{{ p.dataset_count }}</td>
    <td><span class="state state-{{ p.state }}">{{ p.get_state_display }}</span>{% if p.state == "working" and p.claimed_by %} <span class="small muted">by {{ p.claimed_by.username }}</span>{% elif p.state == "queued" %} <span class="small muted">priority {{ p.priority }}</span>{% elif p.state == "discovered" and p.settles_at and p.settles_at > now %} <span class="small muted">settles {{ p.settles_at|date:"Y-m-d" }}</span>{% endif %}{% if p.datasets_changed_at and p.state in changed_flag_states %} <span class="flag" title="datasets changed {{ p.datasets_changed_at|date:'Y-m-d H:i' }} UTC">datasets changed</span>{% endif %}</td>
  </tr>{% endfor %}"""


@pytest.fixture
def every_kind_of_row(make_op, scientist):
    """Programs covering each badge note, the flag, missing values, long / odd / unsafe text."""
    at = datetime(2024, 4, 22, 23, 30, tzinfo=timezone.utc)  # another day in Berlin
    make_op(State.WORKING, ipeid="id.1.working", claimant=scientist, start_time=at)
    make_op(State.QUEUED, ipeid="id.2.queued", priority=7, start_time=at - timedelta(hours=1))
    make_op(State.DISCOVERED, ipeid="id.3.settling", settles_in=timedelta(days=2), start_time=at - timedelta(hours=2))
    make_op(State.DISCOVERED, ipeid="id.4.settled", start_time=at - timedelta(hours=3))
    make_op(State.INVERTED, ipeid="id.5.changed", start_time=at - timedelta(hours=4))
    make_op(State.INVERTIBLE, ipeid="id.6.changed-early", start_time=at - timedelta(hours=5))  # no flag before Working
    make_op(State.PREPROCESSED, ipeid="id.7.no-lines", spectral_lines=[], description="", start_time=None)
    make_op(State.PREPROCESSED, ipeid="id.8.long", description="Sunspot penumbra raster " * 12, start_time=at)
    make_op(State.PREPROCESSED, ipeid="id.9.accents", description="Pénombre de la tache e\u0301 " * 9, start_time=at)
    make_op(State.ERROR, ipeid="id.10&<x>'\"", description='<script>alert("x")</script> & more', start_time=at,
            spectral_lines=["Fe I <630>", "Ca II 854.21"])
    ObservingProgram.objects.filter(instrument_program_execution_id__in=["id.5.changed", "id.6.changed-early"]).update(
        datasets_changed_at=datetime(2024, 5, 1, 22, 15, tzinfo=timezone.utc)
    )


@pytest.mark.parametrize("zone", ["UTC", "Europe/Berlin"])
def test_rows_are_what_the_template_made(every_kind_of_row, settings, zone):
    settings.TIME_ZONE = zone
    reference = engines["django"].from_string(REFERENCE).render({
        "programs": selectors.program_list().order_by("-start_time", "id"),
        "now": dj_timezone.now(),
        "changed_flag_states": CHANGED_FLAG_STATES,
    })
    rows = list(selectors.program_table().order_by("-start_time", "id"))
    assert len(rows) == 10
    assert program_rows(rows) == reference


def test_rows_show_notes_flags_and_escape_text(every_kind_of_row, scientist):
    html = program_rows(list(selectors.program_table().order_by("-start_time", "id")))
    assert f'<span class="small muted">by {scientist.username}</span>' in html
    assert '<span class="small muted">priority 7</span>' in html
    settles = (dj_timezone.now() + timedelta(days=2)).strftime("%Y-%m-%d")
    assert f'<span class="small muted">settles {settles}</span>' in html
    assert html.count("datasets changed</span>") == 1
    assert 'title="datasets changed 2024-05-01 22:15 UTC"' in html
    assert '<td class="nowrap">—</td>' in html and '<td class="lines"><span class="muted">—</span></td>' in html
    assert "<script>" not in html and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; more" in html
    assert '<span class="chip">Fe I &lt;630&gt;</span>' in html
    assert '<a href="/programs/id.10&amp;%3Cx%3E&#x27;%22/">id.10&amp;&lt;x&gt;&#x27;&quot;</a>' in html
    assert ">" + ("Sunspot penumbra raster " * 5)[:109] + "…</div>" in html  # 110 characters with the ellipsis


def test_options_mark_the_selected_one_and_escape():
    assert options([("a", "A"), ("b<", "B&")], "b<") == (
        '<option value="a" >A</option><option value="b&lt;" selected>B&amp;</option>'
    )
    assert options(["VISP", "VBI"], "visp", fold_case=True) == (
        '<option value="VISP" selected>VISP</option><option value="VBI" >VBI</option>'
    )
    assert options(["VISP"], None, fold_case=True) == '<option value="VISP" >VISP</option>'


def test_sort_headers_link_and_mark_the_current_sort():
    headers = [{"label": "Program", "url": "?sort=-program", "aria": "ascending"}, {"label": "Lines"},
               {"label": "Observed", "url": "?a=1&b=2", "aria": None}]
    assert sort_headers(headers, "/programs/") == (
        '<th scope="col" aria-sort="ascending"><a href="/programs/?sort=-program" hx-get="/programs/?sort=-program">'
        'Program <span aria-hidden="true">▲</span></a></th><th scope="col">Lines</th>'
        '<th scope="col"><a href="/programs/?a=1&amp;b=2" hx-get="/programs/?a=1&amp;b=2">Observed</a></th>'
    )


def test_instrument_menu_selects_case_insensitively(client, scientist, make_op):
    make_op(State.PREPROCESSED)
    client.force_login(scientist)
    html = client.get("/programs/", {"instrument": "visp"}).content.decode()
    assert '<option value="VISP" selected>VISP</option>' in html


def test_count_reads_the_program_table_only(client, scientist, make_op):
    """The paginator's COUNT has no join (so it can be an index-only scan); the rows need one SELECT."""
    make_op(State.WORKING, claimant=scientist)
    client.force_login(scientist)
    client.get("/programs/", {"instrument": "visp", "state": "working"})
    with CaptureQueriesContext(connection) as ctx:
        response = client.get("/programs/", {"instrument": "visp", "state": "working"})
    assert f"by {scientist.username}" in response.content.decode()
    programs = [q["sql"] for q in ctx.captured_queries if "inversions_observingprogram" in q["sql"]]
    assert len(programs) == 2
    count = next(sql for sql in programs if "COUNT(*)" in sql)
    assert "JOIN" not in count and "auth_user" not in count
