"""Program pages that stay true while work moves on (DESIGN §11: polling stops at terminal states).

The program page holds a small watcher (``#live``, partials/live.html) that asks
:func:`program_state` every ``POLL_SECONDS`` whether the program's state or claim changed since the
page was drawn: one query, and ``204 No Content`` (htmx swaps nothing) while nothing did. Once it
did, the answer is a watcher that loads the program page once and swaps the parts that depend on
the state — header and stepper, facts and actions, preprocessing, Level 2, results, history —
out of band (``hx-select-oob``), and the new page's watcher polls on from the new version. At a
terminal state the new watcher does not poll.
"""
from __future__ import annotations

from django.http import Http404, HttpResponse
from django.shortcuts import render
from django.utils.cache import patch_cache_control
from django.views.decorators.http import require_GET

from inversions.models import ObservingProgram
from inversions.states import State

POLL_SECONDS = 2
#: no more polling: nothing moves a program on from here but a new report or an admin's correction
TERMINAL = (State.PUBLISHED, State.NOT_INVERTIBLE)
#: what is swapped when the state changes (ids on the program page)
SWAPPED = ("#program-head", "#program-top", "#preprocessing-slot", "#publishing-slot", "#results-slot", "#history")

#: the program's steps on the way to publication, as the stepper shows them
STEPS = (State.DISCOVERED, State.INVERTIBLE, State.PREPROCESSED, State.QUEUED, State.WORKING, State.INVERTED,
         State.PUBLISHED)


def version(state: str, state_changed_at, claimed_by_id, claimed_at) -> str:
    """What the page was drawn from: the state, when it changed, and the claim."""
    stamp = state_changed_at.timestamp() if state_changed_at else 0
    claim = f"{claimed_by_id}@{claimed_at.timestamp()}" if claimed_by_id and claimed_at else "-"
    return f"{state}:{stamp:.6f}:{claim}"


def version_of(program: ObservingProgram) -> str:
    return version(program.state, program.state_changed_at, program.claimed_by_id, program.claimed_at)


def watcher_context(program: ObservingProgram) -> dict:
    return {"program": program, "version": version_of(program), "polls": program.state not in TERMINAL,
            "every": POLL_SECONDS}


def stepper(program: ObservingProgram, history=None) -> list[dict]:
    """The stepper at the top of the program page: each step done, current or to come.

    Not Invertible and Error stand in place of the step they stopped; Queued is shown only when
    the program went through the queue.
    """
    state = program.state
    seen = {t.to_state for t in (history or [])}
    steps = [s for s in STEPS if s != State.QUEUED or State.QUEUED in seen or state == State.QUEUED]
    if state == State.NOT_INVERTIBLE:
        return [{"label": State.DISCOVERED.label, "status": "done"},
                {"label": State.NOT_INVERTIBLE.label, "status": "stopped"}]
    if state == State.ERROR:
        last_good = next((t.from_state for t in reversed(history or []) if t.to_state == State.ERROR), None)
        at = steps.index(last_good) if last_good in steps else 0
        out = [{"label": s.label, "status": "done"} for s in steps[:at + 1]]
        out.append({"label": State.ERROR.label, "status": "stopped"})
        out += [{"label": s.label, "status": "todo"} for s in steps[at + 1:]]
        return out
    at = steps.index(state) if state in steps else 0
    out = [{"label": s.label, "status": "done" if i < at else "current" if i == at else "todo"}
           for i, s in enumerate(steps)]
    if state == State.PUBLISHED:  # the end of the way: done, and where it stands
        out[-1] = {"label": State.PUBLISHED.label, "status": "done", "current": True}
    return out


@require_GET
def program_state(request, ipeid: str):
    """204 while the program is as the page shows it (``v``); else a watcher that refreshes the page's parts."""
    row = (ObservingProgram.objects.filter(instrument_program_execution_id=ipeid)
           .values_list("state", "state_changed_at", "claimed_by_id", "claimed_at").first())
    if row is None:
        raise Http404(f"No Observing Program {ipeid}")
    current = version(*row)
    if request.GET.get("v") == current:
        response = HttpResponse(status=204)
    else:
        response = render(request, "inversions/partials/live_changed.html",
                          {"ipeid": ipeid, "state": row[0], "swapped": ",".join(SWAPPED)})
    patch_cache_control(response, no_store=True)
    return response
