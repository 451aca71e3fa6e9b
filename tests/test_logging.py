"""A 403 is an expected answer: logged on one line, without a traceback."""
from __future__ import annotations

import io
import logging
import logging.config

import pytest
from django.conf import settings
from django.urls import reverse

from inversions.states import State
from l2site.logfilters import ExpectedAnswers


@pytest.mark.django_db
def test_a_403_is_logged_on_one_line_without_a_traceback(client, make_user):
    from tests.dashboard.conftest import build_program

    program = build_program(State.ERROR)
    client.force_login(make_user("han", "science"))
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(settings.LOGGING["formatters"]["plain"]["format"]))
    handler.addFilter(ExpectedAnswers())
    logger = logging.getLogger("django.request")
    logger.addHandler(handler)
    try:
        assert client.post(reverse("program-retry", args=[str(program)])).status_code == 403
    finally:
        logger.removeHandler(handler)
    lines = [line for line in stream.getvalue().splitlines() if line.strip()]
    assert len(lines) == 1 and "Forbidden" in lines[0] and "Traceback" not in stream.getvalue(), stream.getvalue()


def test_other_errors_keep_their_traceback():
    record = logging.LogRecord("django.request", logging.ERROR, __file__, 1, "boom", None,
                               (ValueError, ValueError("x"), None))
    record.status_code = 500
    assert ExpectedAnswers().filter(record) and record.exc_info is not None
    assert "expected_answers" in settings.LOGGING["handlers"]["console"]["filters"]
