"""Workers carry an Inverted program on by themselves: generate, then publish (DESIGN §2, §9)."""
from __future__ import annotations

import pytest

from inversions import lifecycle
from inversions.models import WorkOrder
from inversions.states import State
from publishing import intake, pipeline, tasks
from publishing.pipeline import Outcome
from tests.publishing.test_generate_publish import inverted

pytestmark = pytest.mark.django_db


@pytest.fixture
def automatic(settings):
    settings.L2_AUTO_GENERATE = True
    settings.L2_AUTO_PUBLISH = True
    return settings


def orders(program, kind):
    return list(WorkOrder.objects.filter(program=program, kind=kind).order_by("pk"))


def test_an_inverted_program_is_generated_then_published_without_an_operator(
        make_case_for, scientist, store_settings, automatic):
    case = inverted(make_case_for, scientist)
    assert pipeline.advance_inverted() == {"generate": [case.program.pk], "publish": []}
    [generate] = orders(case.program, WorkOrder.Kind.GENERATE)
    assert (generate.status, generate.requested_by) == (WorkOrder.Status.QUEUED, "worker")
    # while it generates, another round asks for nothing
    assert pipeline.advance_inverted() == {"generate": [], "publish": []}
    assert pipeline.run_generate(generate.pk).outcome == Outcome.DONE

    assert pipeline.advance_inverted() == {"generate": [], "publish": [case.program.pk]}
    [publish] = orders(case.program, WorkOrder.Kind.PUBLISH)
    assert pipeline.advance_inverted() == {"generate": [], "publish": []}  # being published
    assert pipeline.run_publish(publish.pk).outcome == Outcome.DONE
    case.program.refresh_from_db()
    assert case.program.state == State.PUBLISHED
    assert pipeline.advance_inverted() == {"generate": [], "publish": []}  # nothing Inverted is left
    assert len(orders(case.program, WorkOrder.Kind.GENERATE)) == len(orders(case.program, WorkOrder.Kind.PUBLISH)) == 1
    history = list(case.program.transitions.order_by("id").values_list("to_state", "actor"))
    assert history[-1] == (State.PUBLISHED, "worker")


def test_without_auto_publish_generated_files_wait_for_an_operator(make_case_for, scientist, automatic):
    automatic.L2_AUTO_PUBLISH = False
    case = inverted(make_case_for, scientist)
    pipeline.advance_inverted()
    [generate] = orders(case.program, WorkOrder.Kind.GENERATE)
    assert pipeline.run_generate(generate.pk).outcome == Outcome.DONE
    assert pipeline.advance_inverted() == {"generate": [], "publish": []}
    assert orders(case.program, WorkOrder.Kind.PUBLISH) == []
    case.program.refresh_from_db()
    assert case.program.state == State.INVERTED and pipeline.publish_plan(case.program).ok


def test_nothing_is_carried_on_when_both_are_off_or_the_program_is_not_inverted(make_case_for, scientist, settings,
                                                                              automatic):
    case = inverted(make_case_for, scientist)
    settings.L2_AUTO_GENERATE = settings.L2_AUTO_PUBLISH = False
    assert pipeline.advance_inverted() == {"generate": [], "publish": []}
    settings.L2_AUTO_GENERATE = True
    lifecycle.transition(case.program.pk, State.ERROR, actor="someone", reason="by hand",
                         details={"step": "generate", "error": "by hand"})
    assert pipeline.advance_inverted() == {"generate": [], "publish": []}
    assert orders(case.program, WorkOrder.Kind.GENERATE) == []


def test_an_intake_that_accepts_the_results_asks_for_the_next_step_at_once(make_case_for, scientist, automatic,
                                                                         monkeypatch):
    case = make_case_for(scientist)
    order = intake.submit_report(case.program, user=scientist, actor="han", enqueue=False, **case.report())
    sent = []
    monkeypatch.setattr(tasks.advance_inverted, "apply_async", lambda **kw: sent.append(kw["kwargs"]))
    assert tasks.intake_results.run(order.pk) == intake.Outcome.DONE.value
    assert sent == [{"program_ids": [case.program.pk]}]
