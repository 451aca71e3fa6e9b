"""The states of an Observing Program and the table of allowed transitions (DESIGN §4).

No database here: the life-cycle module enforces the table, the dashboard and the API read it.

    Discovered ─┬─> Invertible ──> Preprocessed ──> Queued ──> Working ──> Inverted ──> Published
                └─> Not Invertible                    └────────────^
    Published ──re-inversion──> Working      Published ──republish──> Inverted (regenerate, publish again)
    any step ──> Error (which step, why)     Error ──retry──> the state before the failed step
"""
from __future__ import annotations

from django.db.models import TextChoices


class State(TextChoices):
    DISCOVERED = "discovered", "Discovered"
    INVERTIBLE = "invertible", "Invertible"
    NOT_INVERTIBLE = "not_invertible", "Not Invertible"
    PREPROCESSED = "preprocessed", "Preprocessed"
    QUEUED = "queued", "Queued"
    WORKING = "working", "Working"
    INVERTED = "inverted", "Inverted"
    PUBLISHED = "published", "Published"
    ERROR = "error", "Error"


#: The order of the main line, for "cumulative" displays and the funnel.
MAIN_LINE = (
    State.DISCOVERED,
    State.INVERTIBLE,
    State.PREPROCESSED,
    State.QUEUED,
    State.WORKING,
    State.INVERTED,
    State.PUBLISHED,
)

#: States in which a change of the program's datasets sends it back to Discovered
#: ("datasets changed"). From Working on it is only flagged.
BEFORE_WORKING = frozenset(
    {State.DISCOVERED, State.INVERTIBLE, State.NOT_INVERTIBLE, State.PREPROCESSED, State.QUEUED}
)

#: Ordinary (non-correction) transitions. Error is reachable from every state but itself
#: and leaves only by retry (to the state it came from) or by "datasets changed".
ALLOWED: dict[str, frozenset[str]] = {
    State.DISCOVERED: frozenset({State.INVERTIBLE, State.NOT_INVERTIBLE}),
    State.INVERTIBLE: frozenset({State.PREPROCESSED, State.DISCOVERED}),
    State.NOT_INVERTIBLE: frozenset({State.DISCOVERED}),
    State.PREPROCESSED: frozenset({State.QUEUED, State.WORKING, State.DISCOVERED}),
    # Queued → Queued: the priority changed (recorded like any other step)
    State.QUEUED: frozenset({State.QUEUED, State.WORKING, State.PREPROCESSED, State.DISCOVERED}),
    State.WORKING: frozenset({State.INVERTED, State.PREPROCESSED, State.QUEUED}),
    State.INVERTED: frozenset({State.PUBLISHED}),
    # Working: a new inversion of the program ("re-inversion", with the claim);
    # Inverted: an operator regenerates and republishes the published inversion ("republish")
    State.PUBLISHED: frozenset({State.WORKING, State.INVERTED}),
    State.ERROR: frozenset(),  # see allowed_targets: retry target or Discovered
}
for _state in State:
    if _state != State.ERROR:
        ALLOWED[_state] = ALLOWED[_state] | {State.ERROR}


def allowed_targets(current: str, *, before_error: str | None = None) -> frozenset[str]:
    """Where an ordinary transition may go from ``current``.

    From Error the only ways out are the retry (back to ``before_error``, the state the
    failed step started from) and, when that state was before Working, "datasets changed"
    (to Discovered).
    """
    if current == State.ERROR:
        if before_error is None:
            return frozenset()
        targets = {before_error}
        if before_error in BEFORE_WORKING:
            targets.add(State.DISCOVERED)
        return frozenset(targets)
    return ALLOWED[current]


def label(state: str) -> str:
    return State(state).label if state in State.values else state
