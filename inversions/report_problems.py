"""Every problem of a "report inverted" form at once, in words (the intake's own checks, one field at a time).

``publishing.intake.check_report`` stops at the first problem and names fields as the API does
(``software_commit``); the form instead lists all of them, in the words of the page. Each field is
checked alone by the intake's rules, with harmless values in the other fields.
"""
from __future__ import annotations

import re

#: the API's field names, in the page's words
WORDS = {
    "software_commit": "the inversion software commit",
    "dataset_ids": "the datasets used",
    "collection": "the Globus collection",
    "path": "the path of the result files",
    "notes": "the notes",
}
_NAMES = re.compile(r"\b(" + "|".join(WORDS) + r")\b")
_OK = {"collection": "ok", "path": "/ok", "software_commit": "0000000", "dataset_ids": ["ok"], "notes": ""}


def in_words(message: str) -> str:
    """``"software_commit must be …"`` → ``"The inversion software commit must be …"``."""
    text = _NAMES.sub(lambda m: WORDS[m.group(1)], message.strip())
    return text[:1].upper() + text[1:] + ("" if text.endswith((".", "!", "?", ")")) else ".")


def report_problems(values: dict, current_ids) -> list[tuple[str, str]]:
    """(field, problem in words) for every field of ``values`` the intake would refuse."""
    from publishing.intake import ReportRejected, _check_fields, _check_location

    problems: list[tuple[str, str]] = []
    for field in ("collection", "path", "software_commit", "dataset_ids", "notes"):
        trial = dict(_OK, **{field: values.get(field, "")})
        try:
            _check_fields(trial["collection"], trial["path"], trial["software_commit"], trial["dataset_ids"],
                          trial["notes"])
        except ReportRejected as exc:
            problems.append((exc.field or field, in_words(exc.message)))
    bad = {f for f, _ in problems}
    if not bad & {"collection", "path"}:
        try:
            _check_location(str(values.get("collection", "")).strip(), str(values.get("path", "")).strip())
        except ReportRejected as exc:
            problems.append((exc.field or "path", in_words(exc.message)))
    if "dataset_ids" not in bad:
        unknown = [d for d in values.get("dataset_ids") or [] if d not in set(current_ids)]
        if unknown:
            problems.append(("dataset_ids", f"Not a current dataset of this program: {', '.join(unknown)}."))
    return problems
