"""The inversion software commit must exist in L2_INVERSION_REPO when it is set (a local path or a URL)."""
from __future__ import annotations

import subprocess

import pytest

from publishing import commits, intake

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A git repository with two commits (the second on a branch tip, the first only in the history)."""
    path = tmp_path_factory.mktemp("blanca")
    run = lambda *args: subprocess.run(["git", *args], cwd=path, check=True, capture_output=True, text=True).stdout
    run("init", "-q", "-b", "main")
    for n in (1, 2):
        (path / "blanca.f90").write_text(f"! version {n}\n")
        run("add", "blanca.f90")
        run("-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-q", "-m", f"v{n}")
    first, second = run("rev-list", "--reverse", "HEAD").split()
    return path, first, second


def test_a_local_repository_is_asked_with_cat_file(repo):
    path, first, second = repo
    assert commits.commit_exists(str(path), second[:7]) and commits.commit_exists(str(path), first)
    assert not commits.commit_exists(str(path), "deadbee")
    assert not commits.commit_exists(str(path), "not hex")
    with pytest.raises(commits.RepoUnavailable, match="does not exist"):
        commits.commit_exists(str(path / "missing"), first)


def test_a_url_is_asked_with_ls_remote_then_a_treeless_fetch(repo):
    path, first, second = repo
    url = f"file://{path}"
    assert commits.commit_exists(url, second)  # a branch tip: ls-remote
    assert commits.commit_exists(url, first[:10])  # deeper in the history: fetched
    assert not commits.commit_exists(url, "0123456789abcdef")
    with pytest.raises(commits.RepoUnavailable):
        commits.commit_exists(f"file://{path}/missing", first)


def test_a_report_naming_an_unknown_commit_is_refused(repo, settings, make_case_for, scientist):
    path, first, second = repo
    settings.L2_INVERSION_REPO = str(path)
    case = make_case_for(scientist, l1=False)
    with pytest.raises(intake.ReportRejected) as refused:
        intake.submit_report(case.program, user=scientist, actor="han", enqueue=False,
                             **case.report(software_commit="deadbee"))
    assert refused.value.field == "software_commit" and str(path) in refused.value.message
    settings.L2_INVERSION_REPO = str(path / "missing")
    with pytest.raises(intake.ReportRejected, match="cannot be asked"):
        intake.submit_report(case.program, user=scientist, actor="han", enqueue=False,
                             **case.report(software_commit=first))
    settings.L2_INVERSION_REPO = str(path)
    order = intake.submit_report(case.program, user=scientist, actor="han", enqueue=False,
                                 **case.report(software_commit=second[:12]))
    assert order.details["report"]["software_commit"] == second[:12]


def test_without_a_repository_only_the_format_is_checked(settings, make_case_for, scientist):
    settings.L2_INVERSION_REPO = ""
    case = make_case_for(scientist, l1=False)
    order = intake.submit_report(case.program, user=scientist, actor="han", enqueue=False,
                                 **case.report(software_commit="abcdef0"))
    assert order.details["report"]["software_commit"] == "abcdef0"
    with pytest.raises(intake.ReportRejected):
        intake.submit_report(case.program, user=scientist, actor="han", enqueue=False,
                             **case.report(software_commit="xyz"))
