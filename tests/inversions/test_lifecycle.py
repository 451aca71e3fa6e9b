"""The life-cycle module: the transition table, locks, history, corrections (DESIGN §4)."""
from __future__ import annotations

import threading

import pytest
from django.db import connection, transaction
from django.db.utils import InternalError, ProgrammingError

from inversions import lifecycle
from inversions.models import ObservingProgram, OutboxEvent, Transition
from inversions.states import State
from tests.conftest import PATHS

S = State
# The table of DESIGN §4, written out here independently of inversions.states.
EXPECTED = {
    S.DISCOVERED: {S.INVERTIBLE, S.NOT_INVERTIBLE, S.ERROR},
    S.INVERTIBLE: {S.PREPROCESSED, S.DISCOVERED, S.ERROR},  # Discovered: "datasets changed"
    S.NOT_INVERTIBLE: {S.DISCOVERED, S.ERROR},
    S.PREPROCESSED: {S.QUEUED, S.WORKING, S.DISCOVERED, S.ERROR},
    S.QUEUED: {S.QUEUED, S.WORKING, S.PREPROCESSED, S.DISCOVERED, S.ERROR},  # Queued→Queued: new priority
    S.WORKING: {S.INVERTED, S.PREPROCESSED, S.QUEUED, S.ERROR},  # release → Preprocessed/Queued
    S.INVERTED: {S.PUBLISHED, S.ERROR},
    S.PUBLISHED: {S.WORKING, S.INVERTED, S.ERROR},  # re-inversion (claimed), republish
}
PAIRS = [(a, b) for a in EXPECTED for b in State]


@pytest.mark.django_db
@pytest.mark.parametrize("from_state,to_state", PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
def test_every_pair_is_allowed_or_refused_as_the_table_says(make_program, scientist, from_state, to_state):
    program = make_program(from_state)
    before = program.transitions.count()
    if to_state in EXPECTED[from_state]:
        row = lifecycle.transition(program, to_state, actor="test", user=scientist, reason="table")
        assert (row.from_state, row.to_state) == (from_state, to_state)
        assert program.state == to_state
        assert program.transitions.count() == before + 1
    else:
        with pytest.raises(lifecycle.IllegalTransition) as err:
            lifecycle.transition(program, to_state, actor="test", user=scientist)
        # the message names both states
        assert State(from_state).label in str(err.value) and State(to_state).label in str(err.value)
        program.refresh_from_db()
        assert program.state == from_state
        assert program.transitions.count() == before


@pytest.mark.django_db
@pytest.mark.parametrize("failed_from", [S.DISCOVERED, S.INVERTIBLE, S.PREPROCESSED, S.WORKING, S.INVERTED])
def test_error_leaves_only_by_retry_to_the_state_before(make_program, failed_from, scientist):
    program = make_program(failed_from)
    lifecycle.fail(program, step="test.step", reason="boom")
    program.refresh_from_db()
    assert program.state == S.ERROR
    for target in State:
        allowed = target == failed_from or (target == S.DISCOVERED and failed_from in {S.DISCOVERED, S.INVERTIBLE, S.PREPROCESSED})
        if not allowed:
            with pytest.raises(lifecycle.IllegalTransition):
                lifecycle.transition(program, target, actor="test")
    row = lifecycle.retry(program, user=scientist)
    assert (row.from_state, row.to_state) == (S.ERROR, failed_from)
    assert program.state == failed_from


@pytest.mark.django_db
def test_history_is_cumulative_and_cached_state_is_the_latest(make_program):
    program = make_program(S.INVERTED)
    states = list(program.transitions.order_by("at", "id").values_list("to_state", flat=True))
    assert states == [S.DISCOVERED, S.INVERTIBLE, S.PREPROCESSED, S.WORKING, S.INVERTED]
    assert program.state == states[-1]
    assert program.claimed_by is None  # claimed only while Working
    assert OutboxEvent.objects.filter(transition__program=program).count() == len(states)


@pytest.mark.django_db
def test_claim_fields_follow_the_state(make_program, scientist):
    program = make_program(S.QUEUED)
    assert program.queued_at is not None
    lifecycle.claim(program, user=scientist)
    assert program.state == S.WORKING and program.claimed_by == scientist and program.claimed_at
    assert program.queued_at is None
    lifecycle.release(program, user=scientist, to_state=S.QUEUED)
    assert program.claimed_by is None and program.queued_at is not None


@pytest.mark.django_db
def test_claim_refuses_a_program_that_is_not_available(make_program, scientist):
    program = make_program(S.INVERTIBLE)
    with pytest.raises(lifecycle.StateChanged, match="Invertible"):
        lifecycle.claim(program, user=scientist)


@pytest.mark.django_db
def test_admin_correction_is_recorded_with_actor_reason_and_flag(make_program, admin_user):
    program = make_program(S.PUBLISHED)
    program.inversions.create(  # the accepted results an Inverted program has
        inversion_id="L2TEST0001", software_commit="abcdef1", dataset_ids=["A"], raster_steps=1,
        reported_collection="science-cluster", reported_path="/x", scratch_path="/l2/x/", reported_by="han",
        reported_at=program.state_changed_at)
    row = lifecycle.correct(program, S.INVERTED, user=admin_user, reason="published by mistake")
    assert program.state == S.INVERTED
    latest = program.transitions.latest("at", "id")
    assert latest.pk == row.pk
    assert (latest.actor, latest.actor_user, latest.reason, latest.is_correction) == (
        "ada",
        admin_user,
        "published by mistake",
        True,
    )


@pytest.mark.django_db
@pytest.mark.parametrize("reason", ["", "   "])
def test_a_correction_needs_a_reason(make_program, admin_user, reason):
    program = make_program(S.DISCOVERED)
    with pytest.raises(lifecycle.LifecycleError, match="reason"):
        lifecycle.correct(program, S.WORKING, user=admin_user, reason=reason)
    assert program.transitions.count() == 1


@pytest.mark.django_db
def test_a_failed_batch_writes_nothing(make_program):
    good, bad = make_program(S.DISCOVERED), make_program(S.PUBLISHED)
    with pytest.raises(lifecycle.IllegalTransition):
        lifecycle.apply(
            [lifecycle.Change(good.pk, S.INVERTIBLE), lifecycle.Change(bad.pk, S.INVERTIBLE)], actor="test"
        )
    good.refresh_from_db()
    assert good.state == S.DISCOVERED and good.transitions.count() == 1


@pytest.mark.django_db
def test_datasets_changed_sends_back_before_working_and_flags_after(make_program):
    before = make_program(S.QUEUED)
    after = make_program(S.WORKING)
    failed_early = make_program(S.ERROR)  # failed from Invertible
    back = lifecycle.datasets_changed([before.pk, after.pk, failed_early.pk])
    assert sorted(back) == sorted([before.pk, failed_early.pk])
    for p in (before, after, failed_early):
        p.refresh_from_db()
    assert before.state == S.DISCOVERED and before.transitions.latest("at", "id").reason == "datasets changed"
    assert failed_early.state == S.DISCOVERED
    assert after.state == S.WORKING and after.datasets_changed_at is not None


# --- The database refuses to rewrite history --------------------------------------------
@pytest.mark.django_db
@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE inversions_transition SET reason = 'rewritten'",
        "DELETE FROM inversions_transition",
    ],
)
def test_update_and_delete_on_history_fail_at_the_database(make_program, sql):
    make_program(S.INVERTIBLE)
    with pytest.raises((InternalError, ProgrammingError), match="append-only"):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql)
    assert Transition.objects.filter(reason="rewritten").count() == 0
    assert Transition.objects.count() == 2


@pytest.mark.django_db
def test_the_orm_cannot_delete_history_either(make_program):
    program = make_program(S.INVERTIBLE)
    with pytest.raises(Exception, match="append-only|protected"):
        with transaction.atomic():
            Transition.objects.filter(program=program).delete()
    assert program.transitions.count() == 2


# --- Concurrency --------------------------------------------------------------------------
def _race(n: int, target):
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def run(i):
        try:
            barrier.wait()
            results[i] = target(i)
        except Exception as exc:  # collected for the assertions
            results[i] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


@pytest.mark.django_db(transaction=True)
def test_two_threads_transitioning_one_program_one_wins(make_program, make_user):
    program = make_program(S.PREPROCESSED)
    users = [make_user("han1", "science"), make_user("han2", "science")]
    results = _race(2, lambda i: lifecycle.claim(program.pk, user=users[i]))
    wins = [r for r in results if isinstance(r, Transition)]
    losses = [r for r in results if isinstance(r, Exception)]
    assert len(wins) == 1 and len(losses) == 1
    assert isinstance(losses[0], lifecycle.StateChanged) and "Working" in str(losses[0])
    program.refresh_from_db()
    history = list(program.transitions.order_by("at", "id"))
    assert program.state == history[-1].to_state == S.WORKING
    assert program.claimed_by_id == wins[0].actor_user_id
    assert sum(1 for t in history if t.to_state == S.WORKING) == 1


@pytest.mark.django_db(transaction=True)
def test_pick_next_concurrently_gives_different_programs(make_program, make_user):
    programs = [make_program(S.QUEUED) for _ in range(6)]
    users = [make_user(f"sci{i}", "science") for i in range(6)]
    results = _race(6, lambda i: lifecycle.claim_next(user=users[i]))
    assert all(isinstance(r, ObservingProgram) for r in results), results
    assert len({r.pk for r in results}) == 6
    assert ObservingProgram.objects.filter(pk__in=[p.pk for p in programs], state=S.WORKING).count() == 6


@pytest.mark.django_db
def test_pick_next_takes_priority_then_age(make_program, scientist, operator):
    old = make_program(S.PREPROCESSED)
    low = make_program(S.PREPROCESSED)
    high = make_program(S.PREPROCESSED)
    lifecycle.enqueue(low, user=operator, priority=0)
    lifecycle.enqueue(high, user=operator, priority=5)
    order = [lifecycle.claim_next(user=scientist) for _ in range(4)]
    assert [p.pk if p else None for p in order] == [high.pk, low.pk, old.pk, None]


@pytest.mark.django_db
def test_reprioritise_is_recorded_and_keeps_the_age(make_program, operator):
    program = make_program(S.QUEUED)
    queued_at = program.queued_at
    row = lifecycle.reprioritise(program, user=operator, priority=7)
    assert (row.from_state, row.to_state, row.reason) == (S.QUEUED, S.QUEUED, "priority 0 → 7")
    assert program.priority == 7 and program.queued_at == queued_at


@pytest.mark.django_db
def test_a_retry_back_to_working_gives_the_claim_back_to_its_holder(make_program, scientist, operator):
    program = make_program(S.PREPROCESSED)
    lifecycle.claim(program, user=scientist)
    lifecycle.fail(program, step="results", reason="bad files")
    row = lifecycle.retry(program, user=operator)
    program.refresh_from_db()
    assert (row.to_state, row.actor_user, program.claimed_by) == (S.WORKING, operator, scientist)
    assert program.claimed_at == row.at


@pytest.mark.django_db
@pytest.mark.parametrize("target, lacks", [
    (S.PUBLISHED, "no published inversion"),
    (S.INVERTED, "no accepted results"),
    (S.PREPROCESSED, "no completed preprocessing work order"),
    (S.QUEUED, "no completed preprocessing work order"),
    (S.WORKING, "no completed preprocessing work order"),
])
def test_a_correction_to_a_state_whose_records_are_missing_needs_force(make_program, admin_user, target, lacks):
    program = make_program(S.INVERTIBLE)
    with pytest.raises(lifecycle.MissingRecords, match=lacks):
        lifecycle.correct(program, target, user=admin_user, reason="operator says so")
    assert program.transitions.count() == 2 and program.state == S.INVERTIBLE
    row = lifecycle.correct(program, target, user=admin_user, reason="records lost in the migration", force=True)
    assert program.state == target and row.is_correction and row.details["forced"] is True
    assert any(lacks in m for m in row.details["missing"])


@pytest.mark.django_db
def test_a_correction_with_the_records_is_not_forced(make_program, admin_user, scientist):
    from inversions.models import WorkOrder

    program = make_program(S.INVERTIBLE)
    WorkOrder.objects.create(program=program, kind=WorkOrder.Kind.PREPROCESS, status=WorkOrder.Status.COMPLETED)
    row = lifecycle.correct(program, S.WORKING, user=admin_user, reason="han works on it", claimant=scientist)
    assert (program.state, program.claimed_by) == (S.WORKING, scientist)
    assert row.details == {"claimant": "han"}
    row = lifecycle.correct(program, S.QUEUED, user=admin_user, reason="next", priority=9)
    assert (program.state, program.priority, program.claimed_by) == (S.QUEUED, 9, None) and row.details == {"priority": 9}


@pytest.mark.django_db
def test_a_release_returns_where_the_claim_came_from(make_program, scientist, operator):
    queued = make_program(S.QUEUED)
    lifecycle.claim(queued, user=scientist)
    assert lifecycle.release(queued, user=scientist).to_state == S.QUEUED
    ready = make_program(S.PREPROCESSED)
    lifecycle.claim(ready, user=scientist)
    assert lifecycle.release(ready, user=scientist).to_state == S.PREPROCESSED
    lifecycle.claim(ready, user=scientist)
    assert lifecycle.release(ready, user=operator, to_state=S.QUEUED).to_state == S.QUEUED  # an operator's Requeue
    assert lifecycle.claim_origin([("", S.DISCOVERED), (S.QUEUED, S.WORKING), (S.WORKING, S.ERROR),
                                   (S.ERROR, S.WORKING)]) == S.QUEUED  # a retry is no new claim


@pytest.mark.django_db
def test_an_admin_reprioritises_with_a_reason(make_program, admin_user):
    program = make_program(S.QUEUED)
    row = lifecycle.reprioritise(program, user=admin_user, priority=500, reason="the PI asked")
    assert row.reason == "priority 0 → 500: the PI asked" and program.priority == 500


@pytest.mark.django_db
def test_a_re_inversion_claims_a_published_program_and_is_recorded(make_program, scientist, operator):
    program = make_program(State.PUBLISHED)
    row = lifecycle.reinvert(program, user=scientist, reason="BLANCA 2.1")
    assert (row.from_state, row.to_state, row.reason, row.actor) == (S.PUBLISHED, S.WORKING, "re-inversion: BLANCA 2.1",
                                                                     scientist.username)
    assert program.state == S.WORKING and program.claimed_by == scientist
    assert OutboxEvent.objects.filter(transition=row, routing_key="l2.program.working").exists()
    with pytest.raises(lifecycle.StateChanged):  # only from Published
        lifecycle.reinvert(program, user=scientist)


@pytest.mark.django_db
def test_a_republish_needs_a_reason_and_a_published_program(make_program, operator):
    program = make_program(State.PUBLISHED)
    with pytest.raises(lifecycle.LifecycleError):
        lifecycle.republish(program, user=operator, reason=" ")
    row = lifecycle.republish(program, user=operator, reason="fixed the headers", details={"inversion_id": "L2X"})
    assert (row.from_state, row.to_state, row.details) == (S.PUBLISHED, S.INVERTED, {"republish": True,
                                                                                     "inversion_id": "L2X"})
    assert program.claimed_by is None
    with pytest.raises(lifecycle.StateChanged):
        lifecycle.republish(program, user=operator, reason="again")
