"""Does the inversion software commit a report names exist? (``L2_INVERSION_REPO``)

Plain functions around ``git`` (no Django). A local repository is asked with
``git cat-file -e <commit>^{commit}``; a remote one (URL) first with ``git ls-remote`` (the
commits its branches and tags point at), then, for a commit deeper in its history, by a
tree-less fetch of the history into a temporary repository and ``git cat-file``. Every git
call has a timeout; a repository that cannot be asked raises :class:`RepoUnavailable`.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path

HEX = re.compile(r"^[0-9a-f]{7,40}$")
#: git must never prompt for credentials or a host key (it would wait for the timeout)
GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/true", "SSH_ASKPASS": "/bin/true",
           "GIT_SSH_COMMAND": "ssh -o BatchMode=yes"}


class RepoUnavailable(Exception):
    """The repository could not be asked (missing, unreachable, timed out); the message says why."""


def _git(args: list[str], *, timeout: float, cwd: str | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **GIT_ENV}, check=False)
    except subprocess.TimeoutExpired as exc:
        raise RepoUnavailable(f"git {args[0]} did not answer within {timeout:g} s") from exc
    except OSError as exc:
        raise RepoUnavailable(f"git cannot be run: {exc}") from exc


def is_local(repo: str) -> bool:
    return "://" not in repo and not re.match(r"^[\w.-]+@[\w.-]+:", repo)


def _has_commit(git_dir: str, commit: str, timeout: float) -> bool:
    return _git(["cat-file", "-e", f"{commit}^{{commit}}"], cwd=git_dir, timeout=timeout).returncode == 0


def commit_exists(repo: str, commit: str, *, timeout: float = 30.0) -> bool:
    """True when ``commit`` (7 to 40 hex digits) is a commit of ``repo`` (a local path or a URL)."""
    commit = commit.strip().lower()
    if not HEX.match(commit):
        return False
    if is_local(repo):
        path = Path(repo).expanduser()
        if not path.exists():
            raise RepoUnavailable(f"{repo} does not exist")
        if _git(["rev-parse", "--git-dir"], cwd=str(path), timeout=timeout).returncode != 0:
            raise RepoUnavailable(f"{repo} is not a git repository")
        return _has_commit(str(path), commit, timeout)
    listed = _git(["ls-remote", repo], timeout=timeout)
    if listed.returncode != 0:
        raise RepoUnavailable(f"git ls-remote {repo} failed: {listed.stderr.strip()[:300]}")
    if any(line.split("\t", 1)[0].startswith(commit) for line in listed.stdout.splitlines()):
        return True
    with tempfile.TemporaryDirectory(prefix="l2-commit-") as tmp:
        _git(["init", "--bare", "-q", tmp], timeout=timeout)
        fetched = _git(["fetch", "-q", "--filter=tree:0", repo, "+refs/heads/*:refs/heads/*",
                        "+refs/tags/*:refs/tags/*"], cwd=tmp, timeout=timeout)
        if fetched.returncode != 0:
            raise RepoUnavailable(f"git fetch {repo} failed: {fetched.stderr.strip()[:300]}")
        return _has_commit(tmp, commit, timeout)
