"""Actions: each goes through the life-cycle module, lands in the history, and is refused on the
server to a user without the role (not only hidden)."""
from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.urls import reverse

from inversions import lifecycle
from inversions.models import ObservingProgram, Transition
from inversions.states import State

pytestmark = pytest.mark.django_db


def post(client, name, program=None, data=None, **headers):
    args = [str(program)] if program is not None else []
    return client.post(reverse(name, args=args), data or {}, **headers)


def fresh(program) -> ObservingProgram:
    return ObservingProgram.objects.select_related("claimed_by").get(pk=program.pk)


def history(program) -> list[tuple[str, str, str, str]]:
    return list(
        Transition.objects.filter(program=program).order_by("at", "id").values_list("from_state", "to_state", "actor", "reason")
    )


OPERATOR_ACTIONS = [
    ("program-enqueue", State.PREPROCESSED, {"priority": "5"}),
    ("program-priority", State.QUEUED, {"priority": "5"}),
    ("program-dequeue", State.QUEUED, {}),
    ("program-retry", State.ERROR, {}),
    ("program-requeue", State.WORKING, {}),
]
SCIENCE_ACTIONS = [
    ("program-claim", State.PREPROCESSED, {}),
    ("program-release", State.WORKING, {}),
    ("program-report", State.WORKING, {"collection": "science-cluster", "path": "/x", "software_commit": "abcdef1"}),
]


@pytest.mark.parametrize("name, state, data", OPERATOR_ACTIONS)
def test_science_user_cannot_do_operators_actions(client, make_op, scientist, name, state, data):
    program = make_op(state, claimant=scientist)
    before = history(program)
    client.force_login(scientist)
    response = post(client, name, program, data)
    assert response.status_code == 403
    assert b"Only operators" in response.content
    assert history(program) == before and fresh(program).state == state


@pytest.mark.parametrize("name, state, data", SCIENCE_ACTIONS)
def test_operator_cannot_do_science_actions(client, make_op, operator, name, state, data):
    program = make_op(state, claimant=operator)  # even holding the claim
    before = history(program)
    client.force_login(operator)
    response = post(client, name, program, data)
    assert response.status_code == 403
    assert b"Only the science team" in response.content
    assert history(program) == before and fresh(program).state == state


def test_operator_cannot_pick_next_or_start_as_science(client, make_op, operator, scientist):
    program = make_op(State.QUEUED)
    client.force_login(operator)
    assert post(client, "pick-next").status_code == 403
    assert fresh(program).state == State.QUEUED


def test_science_user_cannot_start_a_scan(client, scientist, monkeypatch):
    from scanning import views as scan_views

    monkeypatch.setattr(scan_views, "start_scan", lambda **kw: pytest.fail("must not start"))
    client.force_login(scientist)
    assert client.post(reverse("scan-start")).status_code == 403


def test_actions_need_post(client, make_op, operator):
    program = make_op(State.ERROR)
    client.force_login(operator)
    assert client.get(reverse("program-retry", args=[str(program)])).status_code == 405
    assert fresh(program).state == State.ERROR


def test_htmx_forbidden_answer_carries_a_message(client, make_op, scientist):
    program = make_op(State.QUEUED)
    client.force_login(scientist)
    response = post(client, "program-dequeue", program, {"from": "queue"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 403
    assert b'data-l2-message>Only operators take programs out of the queue.' in response.content


def test_operator_puts_a_program_in_the_queue_with_a_priority(client, make_op, operator):
    program = make_op(State.PREPROCESSED)
    client.force_login(operator)
    response = post(client, "program-enqueue", program, {"priority": "7"})
    assert response.status_code == 302 and response["Location"] == reverse("program-detail", args=[str(program)])
    program = fresh(program)
    assert (program.state, program.priority) == (State.QUEUED, 7)
    assert history(program)[-1] == (State.PREPROCESSED, State.QUEUED, "olga", "work on this next (priority 7)")


def test_changing_a_priority_is_recorded_and_reorders_the_queue(client, make_op, operator):
    first, second = make_op(State.QUEUED), make_op(State.QUEUED)
    client.force_login(operator)
    html = client.get(reverse("queue")).content.decode()
    assert html.index(str(first)) < html.index(str(second))
    response = post(client, "program-priority", second, {"priority": "3", "from": "queue"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    body = response.content.decode()
    assert "<html" not in body and "now has priority 3" in body  # the queue partial with its message
    assert body.index(str(second)) < body.index(str(first))
    assert history(second)[-1] == (State.QUEUED, State.QUEUED, "olga", "priority 0 → 3")
    assert fresh(second).priority == 3


def test_bad_priority_is_refused_with_a_message(client, make_op, operator):
    program = make_op(State.QUEUED)
    client.force_login(operator)
    response = post(client, "program-priority", program, {"priority": "lots"}, follow=True)
    assert response.status_code == 400
    assert "Priority must be a whole number between -1000 and 1000. “lots” is not." in response.content.decode()
    assert fresh(program).priority == 0 and len(history(program)) == 4
    for value in ("", "5000", "1.5"):
        response = post(client, "program-priority", program, {"priority": value, "from": "queue"}, HTTP_HX_REQUEST="true")
        assert response.status_code == 400 and "data-l2-message" in response.content.decode()
    ready = make_op(State.PREPROCESSED)
    assert post(client, "program-enqueue", ready, {"priority": "x"}).status_code == 400
    assert fresh(ready).state == State.PREPROCESSED


def test_a_get_on_an_action_explains_instead_of_an_empty_405(client, make_op, scientist):
    program = make_op(State.PREPROCESSED)
    client.force_login(scientist)
    for name, args in (("program-claim", [str(program)]), ("pick-next", []), ("program-report", [str(program)]),
                       ("program-retry", [str(program)])):
        response = client.get(reverse(name, args=args))
        html = response.content.decode()
        assert response.status_code == 405 and "POST" in response["Allow"]
        assert "Use the button" in html and "it works from its button" in html, name
    html = client.get(reverse("program-claim", args=[str(program)])).content.decode()
    assert "claims the program for you" in html and f'href="/programs/{program}/"' in html
    assert client.get(reverse("api-report-inverted", args=[str(program)])).content != html.encode()


def test_operator_removes_a_program_from_the_queue(client, make_op, operator):
    program = make_op(State.QUEUED)
    client.force_login(operator)
    post(client, "program-dequeue", program)
    assert fresh(program).state == State.PREPROCESSED
    assert history(program)[-1][:3] == (State.QUEUED, State.PREPROCESSED, "olga")


def test_retry_goes_back_to_the_state_before_the_failed_step(client, make_op, operator, scientist):
    program = make_op(State.WORKING, claimant=scientist)
    lifecycle.fail(program, step="publish.transfer", reason="Globus said no")
    client.force_login(operator)
    response = post(client, "program-retry", program, follow=True)
    assert "is back to Working" in response.content.decode()
    assert fresh(program).state == State.WORKING
    assert history(program)[-1] == (State.ERROR, State.WORKING, "olga", "retried by an operator")


def test_retry_of_a_program_no_longer_in_error_says_so(client, make_op, operator):
    program = make_op(State.INVERTIBLE)
    client.force_login(operator)
    response = post(client, "program-retry", program, follow=True)
    assert response.status_code == 200
    assert "is Invertible now, not Error" in response.content.decode()


def test_operator_requeues_a_stale_claim(client, make_op, operator, scientist):
    program = make_op(State.WORKING, claimant=scientist)
    ObservingProgram.objects.filter(pk=program.pk).update(claimed_at=program.claimed_at - timedelta(days=5))
    client.force_login(operator)
    queue = client.get(reverse("queue")).content.decode()
    assert '<span class="flag">stale</span>' in queue
    post(client, "program-requeue", program, {"from": "queue"}, HTTP_HX_REQUEST="true")
    program = fresh(program)
    assert (program.state, program.claimed_by) == (State.QUEUED, None)
    assert history(program)[-1][2:] == ("olga", f"requeued by an operator (claimed by han since {(program.transitions.filter(to_state=State.WORKING).last().at - timedelta(days=5)):%Y-%m-%d %H:%M})")


def test_scientist_claims_from_the_program_page_and_releases_it_back_to_preprocessed(client, make_op, scientist):
    """A release returns the claim where it came from: asking for the queue does not enqueue (an operator's action)."""
    program = make_op(State.PREPROCESSED)
    client.force_login(scientist)
    post(client, "program-claim", program)
    program = fresh(program)
    assert (program.state, program.claimed_by) == (State.WORKING, scientist)
    page = client.get(reverse("program-detail", args=[str(program)])).content.decode()
    assert "han since" in page and "(you)" in page and 'id="report"' in page
    assert "Back to Preprocessed, where the claim came from." in page and 'name="to"' not in page
    post(client, "program-release", program, {"to": "queued"})
    assert fresh(program).state == State.PREPROCESSED
    assert history(program)[-1][:2] == (State.WORKING, State.PREPROCESSED)


def test_a_claim_taken_from_the_queue_is_released_back_to_the_queue(client, make_op, scientist):
    program = make_op(State.QUEUED)
    ObservingProgram.objects.filter(pk=program.pk).update(priority=7)
    client.force_login(scientist)
    post(client, "program-claim", program)
    assert "Back to Queued" in client.get(reverse("program-detail", args=[str(program)])).content.decode()
    post(client, "program-release", program, {"to": "preprocessed"})
    program = fresh(program)
    assert (program.state, program.priority, program.claimed_by) == (State.QUEUED, 7, None)


# --- next (issue 13): never a 500 after the action, never a redirect off the site ------------
BAD_NEXTS = ["yesterday", "program-list", "javascript:alert(1)", "//evil.example/x", "https://evil.example/", "/\\evil"]


@pytest.mark.parametrize("target", BAD_NEXTS)
def test_a_bad_next_falls_back_to_the_program_page(client, make_op, operator, target):
    program = make_op(State.QUEUED)
    ObservingProgram.objects.filter(pk=program.pk).update(priority=1000)
    client.force_login(operator)
    response = post(client, "program-priority", program, {"priority": "777", "next": target})
    assert response.status_code == 302
    assert response["Location"] == reverse("program-detail", args=[str(program)])
    assert fresh(program).priority == 777


def test_a_good_next_is_followed(client, make_op, operator):
    program = make_op(State.QUEUED)
    client.force_login(operator)
    response = post(client, "program-dequeue", program, {"next": "/queue/?page=2"})
    assert (response.status_code, response["Location"]) == (302, "/queue/?page=2")


@pytest.mark.parametrize("name, state, data, role", [
    ("program-claim", State.PREPROCESSED, {}, "science"),
    ("program-release", State.WORKING, {}, "science"),
    ("program-enqueue", State.PREPROCESSED, {"priority": "3"}, "operators"),
    ("program-dequeue", State.QUEUED, {}, "operators"),
    ("program-retry", State.ERROR, {}, "operators"),
    ("program-requeue", State.WORKING, {}, "operators"),
    ("program-preprocess", State.INVERTIBLE, {}, "operators"),
])
def test_every_action_with_next_yesterday_redirects_to_the_program_page(client, make_op, make_user, name, state, data,
                                                                        role):
    user = make_user("actor", role)
    program = make_op(state, claimant=user)
    client.force_login(user)
    response = post(client, name, program, {**data, "next": "yesterday"})
    assert (response.status_code, response["Location"]) == (302, reverse("program-detail", args=[str(program)]))


def test_a_bad_priority_with_next_yesterday_is_a_400_and_changes_nothing(client, make_op, operator):
    program = make_op(State.PREPROCESSED)
    client.force_login(operator)
    response = post(client, "program-enqueue", program, {"priority": "not a number", "next": "yesterday"})
    assert response.status_code == 400 and "not a number" in response.content.decode()
    assert fresh(program).state == State.PREPROCESSED


def test_a_scientist_cannot_release_someone_elses_claim(client, make_op, make_user, scientist):
    other = make_user("mei", "science")
    program = make_op(State.WORKING, claimant=other)
    client.force_login(scientist)
    response = post(client, "program-release", program)
    assert response.status_code == 403 and b"claimed by mei" in response.content
    assert fresh(program).claimed_by == other
    page = client.get(reverse("program-detail", args=[str(program)])).content.decode()
    assert 'id="report"' not in page and "Release claim" not in page


def test_claiming_a_program_taken_meanwhile_shows_why(client, make_op, scientist, make_user):
    program = make_op(State.PREPROCESSED)
    lifecycle.claim(program, user=make_user("mei", "science"))
    client.force_login(scientist)
    response = post(client, "program-claim", program, follow=True)
    assert response.status_code == 200
    assert "is Working now, not Preprocessed or Queued" in response.content.decode()


def test_pick_next_takes_priority_then_age_then_preprocessed(client, make_op, make_user, operator):
    old_low = make_op(State.QUEUED)
    ready = make_op(State.PREPROCESSED)
    new_high = make_op(State.QUEUED)
    lifecycle.dequeue(new_high, user=operator)
    lifecycle.enqueue(new_high, user=operator, priority=5)
    picked = []
    for name in ("a", "b", "c"):
        c = Client()
        c.force_login(make_user(name, "science"))
        response = c.post(reverse("pick-next"))
        picked.append(response["Location"])
    assert picked == [reverse("program-detail", args=[str(p)]) for p in (new_high, old_low, ready)]
    c = Client()
    c.force_login(make_user("d", "science"))
    response = c.post(reverse("pick-next"), follow=True)
    assert "Nothing is waiting" in response.content.decode()


@pytest.mark.django_db(transaction=True)
def test_pick_next_at_once_never_gives_the_same_program(make_user, make_program):
    queued = [make_program(State.QUEUED) for _ in range(6)]
    users = [make_user(f"s{i}", "science") for i in range(6)]
    barrier = threading.Barrier(len(users))
    results: list[str] = []

    def pick(user):
        try:
            c = Client()
            c.force_login(user)
            barrier.wait()
            results.append(c.post(reverse("pick-next"))["Location"])
        finally:
            connection.close()  # this thread's own connection

    threads = [threading.Thread(target=pick, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == sorted(reverse("program-detail", args=[str(p)]) for p in queued)
    claims = ObservingProgram.objects.filter(state=State.WORKING).values_list("claimed_by__username", flat=True)
    assert sorted(claims) == sorted(u.username for u in users)


def test_admin_sees_the_correction_link(client, make_op, admin_user, scientist):
    program = make_op(State.NOT_INVERTIBLE)
    client.force_login(admin_user)
    page = client.get(reverse("program-detail", args=[str(program)])).content.decode()
    assert f'{reverse("admin:inversions_observingprogram_changelist")}?q={program}' in page
    client.force_login(scientist)
    assert "Correct the state in the admin" not in client.get(reverse("program-detail", args=[str(program)])).content.decode()


def test_preprocess_now_stands_in_the_operators_actions_card(client, make_op, operator, scientist):
    program = make_op(State.INVERTIBLE)
    client.force_login(operator)
    html = client.get(reverse("program-detail", args=[str(program)])).content.decode()
    actions = html.split('id="actions"', 1)[1].split("</section>", 1)[0]
    assert f'action="{reverse("program-preprocess", args=[str(program)])}"' in actions and "Preprocess now" in actions
    client.force_login(scientist)
    html = client.get(reverse("program-detail", args=[str(program)])).content.decode()
    assert "Preprocess now" not in html.split('id="actions"', 1)[1].split("</section>", 1)[0]
