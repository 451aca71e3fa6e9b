"""Login everywhere, roles on the server, API tokens, health probes, management commands."""
from __future__ import annotations

import pytest
from django.core.management import call_command
from django.urls import reverse

from inversions.states import State
from publishing.models import ApiToken

PAGES = ["overview", "program-list"]


@pytest.mark.django_db
@pytest.mark.parametrize("name", PAGES)
def test_pages_redirect_to_login_when_logged_out(client, name):
    response = client.get(reverse(name))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


@pytest.mark.django_db
def test_program_page_and_actions_need_login(client, make_program):
    program = make_program(State.PREPROCESSED)
    url = reverse("program-detail", args=[program.instrument_program_execution_id])
    assert client.get(url).status_code == 302
    assert client.post(reverse("program-claim", args=[program.instrument_program_execution_id])).status_code == 302
    program.refresh_from_db()
    assert program.state == State.PREPROCESSED


@pytest.mark.django_db
def test_logged_in_pages_render(client, scientist, make_program):
    program = make_program(State.PREPROCESSED)
    client.force_login(scientist)
    for url in [reverse("overview"), reverse("program-list"), reverse("program-detail", args=[str(program)])]:
        response = client.get(url)
        assert response.status_code == 200, url
        assert str(program) in client.get(reverse("program-list")).content.decode()


@pytest.mark.django_db
def test_a_user_outside_science_cannot_claim(client, operator, make_program):
    program = make_program(State.PREPROCESSED)
    client.force_login(operator)
    response = client.post(reverse("program-claim", args=[str(program)]))
    assert response.status_code == 403
    program.refresh_from_db()
    assert program.state == State.PREPROCESSED and program.transitions.count() == 3


@pytest.mark.django_db
def test_a_science_user_claims_and_releases(client, scientist, make_program):
    program = make_program(State.PREPROCESSED)
    client.force_login(scientist)
    assert client.post(reverse("program-claim", args=[str(program)])).status_code == 302
    program.refresh_from_db()
    assert program.state == State.WORKING and program.claimed_by == scientist
    client.post(reverse("program-release", args=[str(program)]))
    program.refresh_from_db()
    assert program.state == State.PREPROCESSED and program.claimed_by is None


@pytest.mark.django_db
def test_api_tokens_work_and_can_be_revoked(client, make_user, make_program):
    make_program(State.INVERTIBLE, ipeid="id.api.1")
    robot = make_user("blanca", "science")
    token, raw = ApiToken.issue(name="blanca-cluster", user=robot)
    assert token.key_hash != raw and raw not in token.key_hash  # stored hashed
    url = reverse("api-programs")
    assert client.get(url).status_code == 401
    ok = client.get(url, HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert ok.status_code == 200
    assert [p["instrumentProgramExecutionId"] for p in ok.json()["results"]] == ["id.api.1"]
    assert client.get(url, HTTP_AUTHORIZATION="Bearer l2t_not-a-token").status_code == 401
    token.revoke()
    assert client.get(url, HTTP_AUTHORIZATION=f"Bearer {raw}").status_code == 401


@pytest.mark.django_db
def test_api_token_command_creates_and_revokes(make_user, capsys):
    make_user("blanca", "science")
    call_command("api_token", "create", "blanca-cluster", "--user", "blanca")
    raw = capsys.readouterr().out.strip().splitlines()[-1]
    token = ApiToken.objects.get()
    assert ApiToken.authenticate(raw) == token
    call_command("api_token", "revoke", str(token.pk))
    assert ApiToken.authenticate(raw) is None


@pytest.mark.django_db
def test_create_l2_user_puts_users_in_groups(capsys, django_user_model):
    call_command("create_l2_user", "newbie", "--group", "science", "--group", "operators")
    out = capsys.readouterr().out
    user = django_user_model.objects.get(username="newbie")
    assert sorted(user.groups.values_list("name", flat=True)) == ["operators", "science"]
    password = out.split("password: ")[1].strip()
    assert user.check_password(password)


def test_healthz_is_open_and_says_nothing_secret(client):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_readyz_checks_database_and_broker(client, settings):
    response = client.get("/readyz")
    assert response.status_code == 200, response.content
    assert response.json() == {"status": "ready", "database": "ok", "broker": "ok"}


@pytest.mark.django_db
def test_readyz_is_503_when_the_broker_is_down(client, settings):
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {}
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["broker"] == "unreachable" and body["database"] == "ok"
    assert "redis://" not in response.content.decode()


@pytest.mark.django_db
def test_admin_correction_action_records_a_flagged_transition(client, admin_user, make_program):
    program = make_program(State.NOT_INVERTIBLE)
    client.force_login(admin_user)
    url = reverse("admin:inversions_observingprogram_changelist")
    response = client.post(
        url,
        {"action": "correct_state", "_selected_action": [program.pk], "apply": "1", "to_state": State.INVERTIBLE, "reason": "rule fixed"},
    )
    assert response.status_code == 302
    program.refresh_from_db()
    latest = program.transitions.latest("at", "id")
    assert program.state == State.INVERTIBLE
    assert (latest.is_correction, latest.actor, latest.reason) == (True, "ada", "rule fixed")


@pytest.mark.django_db
def test_admin_correction_without_reason_is_refused(client, admin_user, make_program):
    program = make_program(State.NOT_INVERTIBLE)
    client.force_login(admin_user)
    response = client.post(
        reverse("admin:inversions_observingprogram_changelist"),
        {"action": "correct_state", "_selected_action": [program.pk], "apply": "1", "to_state": State.INVERTIBLE, "reason": " "},
    )
    assert response.status_code == 200 and b"needs a reason" in response.content
    program.refresh_from_db()
    assert program.state == State.NOT_INVERTIBLE


@pytest.mark.django_db
def test_admin_cannot_add_change_or_delete_history(client, admin_user, make_program):
    program = make_program(State.INVERTIBLE)
    client.force_login(admin_user)
    row = program.transitions.first()
    assert client.get(reverse("admin:inversions_transition_add")).status_code == 403
    assert client.get(reverse("admin:inversions_transition_delete", args=[row.pk])).status_code == 403
    change = client.post(reverse("admin:inversions_transition_change", args=[row.pk]), {"reason": "x"})
    assert change.status_code == 403
    assert client.get(reverse("admin:inversions_transition_change", args=[row.pk])).status_code == 200  # view only
    page = client.get(reverse("admin:inversions_observingprogram_change", args=[program.pk]))
    assert page.status_code == 200 and b"Invertible" in page.content  # history inline


def test_check_deploy_is_clean_with_production_settings():
    import os
    import secrets
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("L2_", "DJANGO_SETTINGS", "DEBUG", "EVENT_RELAY"))}
    env.update(
        SECRET_KEY=secrets.token_urlsafe(60),
        ALLOWED_HOSTS="l2.example.org",
        DJANGO_SETTINGS_MODULE="l2site.settings",
        DATABASE_URL=os.environ.get("DATABASE_URL") or "postgres://l2@db.invalid:5432/l2",
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        capture_output=True, text=True, env=env, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


# --- The admin changes programs only through the life-cycle (issue 13) ----------------------
CHANGELIST = "admin:inversions_observingprogram_changelist"


@pytest.mark.django_db
def test_the_admin_cannot_edit_a_programs_row(client, admin_user, make_program):
    program = make_program(State.QUEUED, experiment_description="the PI's words")
    client.force_login(admin_user)
    url = reverse("admin:inversions_observingprogram_change", args=[program.pk])
    page = client.get(url).content.decode()
    assert 'name="priority"' not in page and 'name="experiment_description"' not in page and 'name="_save"' not in page
    response = client.post(url, {"priority": "999", "state": State.PUBLISHED, "experiment_description": "edited",
                                 "claimed_by": str(admin_user.pk), "dataset_count": "7", "_save": "Save"})
    assert response.status_code == 403
    fresh = type(program).objects.get(pk=program.pk)
    assert (fresh.priority, fresh.state, fresh.experiment_description, fresh.claimed_by_id, fresh.dataset_count) == (
        program.priority, State.QUEUED, "the PI's words", None, program.dataset_count)
    assert fresh.transitions.count() == program.transitions.count()


@pytest.mark.django_db
def test_correct_state_shows_what_the_target_implies(client, admin_user, make_program):
    program = make_program(State.INVERTIBLE)
    client.force_login(admin_user)
    page = client.post(reverse(CHANGELIST), {"action": "correct_state", "_selected_action": [program.pk]})
    html = page.content.decode()
    assert page.status_code == 200 and 'data-testid="implies"' in html
    assert "needs a published inversion" in html and "needs a completed preprocessing work order" in html


@pytest.mark.django_db
def test_correct_state_refuses_a_target_whose_records_are_missing_unless_forced(client, admin_user, make_program):
    program = make_program(State.INVERTED)
    client.force_login(admin_user)
    data = {"action": "correct_state", "_selected_action": [program.pk], "apply": "1", "to_state": State.PUBLISHED,
            "reason": "the store has it"}
    refused = client.post(reverse(CHANGELIST), data)
    html = refused.content.decode()
    assert refused.status_code == 200 and 'data-testid="missing-records"' in html and "no published inversion" in html
    assert "nothing was changed" in html
    program.refresh_from_db()
    assert program.state == State.INVERTED and program.transitions.filter(is_correction=True).count() == 0
    forced = client.post(reverse(CHANGELIST), {**data, "force": "on"})
    assert forced.status_code == 302
    program.refresh_from_db()
    row = program.transitions.latest("at", "id")
    assert program.state == State.PUBLISHED and row.is_correction and row.reason == "the store has it"
    assert row.details["forced"] is True and row.details["missing"] == ["no published inversion (none recorded in the metadata store)"]


@pytest.mark.django_db
def test_correct_state_to_working_names_the_claimant(client, admin_user, scientist, make_program):
    from inversions.models import WorkOrder

    program = make_program(State.PREPROCESSED)
    WorkOrder.objects.create(program=program, kind=WorkOrder.Kind.PREPROCESS, status=WorkOrder.Status.COMPLETED)
    client.force_login(admin_user)
    response = client.post(reverse(CHANGELIST), {
        "action": "correct_state", "_selected_action": [program.pk], "apply": "1", "to_state": State.WORKING,
        "claimant": str(scientist.pk), "reason": "han took it by mail"})
    assert response.status_code == 302
    program.refresh_from_db()
    row = program.transitions.latest("at", "id")
    assert (program.state, program.claimed_by, row.actor, row.details) == (State.WORKING, scientist, "ada", {"claimant": "han"})


@pytest.mark.django_db
def test_the_admin_sets_a_priority_through_the_life_cycle(client, admin_user, make_program):
    program = make_program(State.QUEUED)
    other = make_program(State.PREPROCESSED)
    client.force_login(admin_user)
    base = {"action": "set_priority", "_selected_action": [program.pk, other.pk], "apply": "1", "priority": "777"}
    assert b"needs a reason" in client.post(reverse(CHANGELIST), {**base, "reason": "  "}).content
    response = client.post(reverse(CHANGELIST), {**base, "reason": "the PI asked"}, follow=True)
    assert response.status_code == 200 and "New priority for 1 program(s)." in response.content.decode()
    program.refresh_from_db()
    other.refresh_from_db()
    row = program.transitions.latest("at", "id")
    assert program.priority == 777 and (row.from_state, row.to_state, row.actor) == (State.QUEUED, State.QUEUED, "ada")
    assert row.reason == "priority 0 → 777: the PI asked"
    assert other.state == State.PREPROCESSED and other.transitions.count() == 3


# --- Login throttling (django-axes) -----------------------------------------------------------
def _login(client, username, password, ip="10.0.0.1", **extra):
    return client.post(reverse("login"), {"username": username, "password": password}, REMOTE_ADDR=ip, **extra)


@pytest.mark.django_db
def test_failed_logins_lock_out_that_user_from_that_address(client, make_user, settings):
    from django.test import Client

    settings.AXES_FAILURE_LIMIT = 3
    make_user("han", "science", password="right-pw-123")
    make_user("mei", "science", password="right-pw-456")
    for _ in range(2):
        assert _login(client, "han", "wrong").status_code == 200  # the form again, with the error
    locked = _login(client, "han", "wrong")
    assert locked.status_code == 429 and 'data-testid="locked-out"' in locked.content.decode()
    assert "han" in locked.content.decode()
    again = _login(Client(), "han", "right-pw-123")  # even the right password, while locked out
    assert again.status_code == 429 and "_auth_user_id" not in again.client.session
    assert _login(Client(), "han", "right-pw-123", ip="10.0.0.2").status_code == 302  # another address
    assert _login(Client(), "mei", "right-pw-456").status_code == 302  # another user from the same address


@pytest.mark.django_db
def test_a_good_login_resets_the_count(client, make_user, settings):
    settings.AXES_FAILURE_LIMIT = 3
    make_user("han", "science", password="right-pw-123")
    for _ in range(2):
        _login(client, "han", "wrong")
    assert _login(client, "han", "right-pw-123").status_code == 302
    client.logout()
    for _ in range(2):
        assert _login(client, "han", "wrong").status_code == 200
    assert _login(client, "han", "right-pw-123").status_code == 302


@pytest.mark.django_db
def test_behind_the_proxy_the_address_is_the_one_it_appended(client, make_user, settings):
    settings.AXES_FAILURE_LIMIT, settings.L2_BEHIND_PROXY = 2, True
    make_user("han", "science", password="right-pw-123")
    for spoofed in ("1.1.1.1", "2.2.2.2"):  # the client's own X-Forwarded-For entries do not help it
        _login(client, "han", "wrong", ip="10.0.0.9", HTTP_X_FORWARDED_FOR=f"{spoofed}, 192.0.2.7")
    assert _login(client, "han", "right-pw-123", ip="10.0.0.9", HTTP_X_FORWARDED_FOR="3.3.3.3, 192.0.2.7").status_code == 429
    assert _login(client, "han", "right-pw-123", ip="10.0.0.9", HTTP_X_FORWARDED_FOR="192.0.2.8").status_code == 302


def test_the_lockout_settings_come_from_the_environment():
    import os
    import subprocess
    import sys

    code = "from django.conf import settings as s; print(s.AXES_FAILURE_LIMIT, s.AXES_COOLOFF_TIME.total_seconds())"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "l2site.settings", "SECRET_KEY": "x",
           "L2_LOGIN_FAILURE_LIMIT": "7", "L2_LOGIN_LOCKOUT_MINUTES": "2.5"}
    out = subprocess.run([sys.executable, "-c", "import django; django.setup(); " + code], capture_output=True,
                         text=True, env=env, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.stdout.split() == ["7", "150.0"], out.stderr


@pytest.mark.django_db
def test_a_user_name_too_long_for_any_account_is_a_form_error_not_a_500(client):
    from axes.models import AccessAttempt

    answer = _login(client, "x" * 300, "whatever")
    assert answer.status_code == 200 and answer.context["form"].errors["username"]
    assert not AccessAttempt.objects.exists()  # nobody was asked: nothing a varchar(255) cannot hold


@pytest.mark.django_db
def test_the_header_links_are_reversed_once_per_script_prefix(client, make_user):
    """``{% site_url %}`` (base.html's links) answers what ``{% url %}`` would, under any script prefix;
    ``{% site_static %}`` what ``{% static %}`` would."""
    from django.urls import get_script_prefix, set_script_prefix

    from django.templatetags.static import static

    from l2site.sitetags import site_static, site_url

    names = ["overview", "program-list", "my-programs", "proposal-list", "queue", "scan-list", "admin:index",
             "logout", "my-tokens", "login"]
    assert [site_url(n) for n in names] == [reverse(n) for n in names]
    before = get_script_prefix()
    try:
        set_script_prefix("/l2/")
        assert site_url("program-list") == "/l2/programs/" == reverse("program-list")
    finally:
        set_script_prefix(before)
    assert site_url("program-list") == "/programs/"
    client.force_login(make_user("sci", "science"))
    html = client.get(reverse("overview")).content.decode()
    for name in ("overview", "program-list", "my-programs", "proposal-list", "queue", "scan-list", "my-tokens", "logout"):
        assert f'"{reverse(name)}"' in html
    assert 'aria-current="page">Overview' in html
    for path in ("css/l2.css", "vendor/htmx.min.js", "js/l2.js"):  # {% site_static %}: what {% static %} says
        assert site_static(path) == static(path) and f'"{static(path)}"' in html
