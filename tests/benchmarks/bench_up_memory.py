"""Whole-system memory of ``python3 l2 up`` (issue 16, target 5): under 1.5 GB for all its processes.

    python tests/benchmarks/bench_up_memory.py               # 3 starts, 60 s of use each
    python tests/benchmarks/bench_up_memory.py --repeat 1 --use-seconds 20

Starts ``l2 up`` as a user does, with the embedded defaults (embedded PostgreSQL, kombu's
filesystem broker, the metadata-store emulator with the fixtures: ``DATABASE_URL``,
``CELERY_BROKER_URL``, ``METADATA_STORE_URL`` and ``EVENT_BUS_URL`` are removed from its
environment) in its own ``L2_VAR_DIR`` and on its own ports; waits for ``/readyz``; then uses
it: logs in as the demo admin, starts a scan and waits for it, loads the program list, the
queue, the scans page and a few program pages, while the demo programs are preprocessed by
the worker (``make_demo_l1 --start``); then stops it (Ctrl-C, as a user would).

Every second while it runs, the memory of every process of the system is read: the process
tree under ``l2 up`` (web, Celery worker and its pool, beat, the event consumer, the
emulator) plus the embedded PostgreSQL server (``pg_ctl`` detaches it from the tree; found
by the ``postmaster.pid`` of its data folder) and its backends. Two sums are printed:

* **PSS** (``/proc/<pid>/smaps_rollup``: each page shared by n processes counts 1/n in each):
  the sum over processes is the physical memory the system holds. This is the figure held
  against the target: gunicorn's and Celery's forked children share their parent's pages
  copy-on-write, and PostgreSQL's backends share its buffers, so a sum of RSS counts those
  pages several times.
* **RSS** (``VmRSS``), for comparison: an upper bound.

Printed per run: the peak of each sum over the samples, and each process's figures at the
sample where the PSS sum peaked, largest first, with the packages whose compiled libraries
the biggest process has mapped (what it imported). Target: peak PSS sum < 1.5 GB (1536 MiB).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
TARGET_MB = 1536.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def descendants(roots: list[int]) -> list[int]:
    tree, out, todo = _children(), [], list(roots)
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(tree.get(pid, []))
    return out


def _name(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    parts = [p.decode(errors="replace") for p in raw if p]
    if not parts:
        return "?"
    if "postgres" in parts[0]:
        return parts[0].rsplit("/", 1)[-1] + (" " + " ".join(parts[1:])[:50] if len(parts) > 1 else "")
    parts[0] = parts[0].rsplit("/", 1)[-1]
    shown = [p.rsplit("/", 1)[-1] if p.startswith("/") else p for p in parts[:7]]
    return " ".join(shown)[:90]


def memory_kb(pid: int) -> tuple[int, int] | None:
    """(PSS, RSS) of the process in kB, or None if it is gone."""
    try:
        pss = rss = 0
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
                elif line.startswith("Rss:"):
                    rss = int(line.split()[1])
        return pss, rss
    except (OSError, ValueError):
        return None


def native_packages(pid: int) -> list[str]:
    """The site-packages whose compiled libraries the process has mapped (what it imported)."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return []
    return sorted(set(re.findall(r"site-packages/([A-Za-z0-9_]+)[^\n]*\.so", maps)))


class Sampler(threading.Thread):
    """Reads every process's memory once a second; keeps the sample with the largest PSS sum."""

    def __init__(self, up_pid: int, pgdata: Path):
        super().__init__(daemon=True)
        self.up_pid, self.pgdata = up_pid, pgdata
        self.peak_pss = self.peak_rss = 0
        self.at_peak: list[tuple[int, str, int, int]] = []
        self.samples = 0
        self.top_packages: list[str] = []
        self.stopping = threading.Event()

    def roots(self) -> list[int]:
        roots = [self.up_pid]
        try:
            roots.append(int((self.pgdata / "postmaster.pid").read_text().split("\n", 1)[0]))
        except (OSError, ValueError):
            pass
        return roots

    def run(self) -> None:
        while not self.stopping.wait(1.0):
            rows = []
            for pid in set(descendants(self.roots())):
                got = memory_kb(pid)
                if got:
                    rows.append((pid, _name(pid), *got))
            pss, rss = sum(r[2] for r in rows), sum(r[3] for r in rows)
            self.samples += 1
            self.peak_rss = max(self.peak_rss, rss)
            if pss > self.peak_pss:
                self.peak_pss, self.at_peak = pss, sorted(rows, key=lambda r: -r[2])
                self.top_packages = native_packages(self.at_peak[0][0]) if self.at_peak else []


def use(base: str, var: Path, seconds: float) -> list[str]:
    """Log in as the demo admin, start a scan and wait for it, load pages; returns what it did."""
    did = []
    s = requests.Session()
    password = json.loads((var / "demo-users.json").read_text())["admin"]
    page = s.get(f"{base}/accounts/login/", timeout=30)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    r = s.post(f"{base}/accounts/login/", data={"username": "admin", "password": password,
                                               "csrfmiddlewaretoken": token}, timeout=30)
    assert r.ok and "sessionid" in s.cookies, f"login failed: {r.status_code}"
    did.append("logged in")
    page = s.get(f"{base}/scans/", timeout=30)
    token = s.cookies.get("csrftoken")
    r = s.post(f"{base}/scans/start", data={"full": "1", "csrfmiddlewaretoken": token},
               headers={"Referer": f"{base}/scans/"}, timeout=30)
    assert r.ok, f"scan start: {r.status_code}"
    scan = max(int(n) for n in re.findall(r'href="/scans/(\d+)/"', s.get(f"{base}/scans/", timeout=30).text))
    deadline = time.monotonic() + 300
    status = "?"
    while time.monotonic() < deadline:
        progress = s.get(f"{base}/scans/{scan}/progress", timeout=30).text
        status = re.search(r'data-status="([^"]+)"', progress).group(1)
        if status not in ("running", "queued", "pending"):
            break
        time.sleep(1)
    did.append(f"full scan #{scan} {status}")
    started = time.monotonic()
    pages = 0
    programs = []
    while time.monotonic() - started < seconds:
        for path in ("/", "/?page=2", "/queue/", "/scans/", *programs[:5]):
            r = s.get(base + path, timeout=60)
            pages += 1
            if path == "/" and not programs:
                programs = sorted(set(re.findall(r'href="(/programs/[^"/]+/)"', r.text)))
        time.sleep(0.5)
    did.append(f"{pages} pages")
    return did


def one_start(seconds: float) -> dict:
    var = Path(tempfile.mkdtemp(prefix="l2-bench-up-"))
    port, emulator = free_port(), free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "METADATA_STORE_URL", "EVENT_BUS_URL",
                        "METADATA_STORE_TOKEN", "DJANGO_SETTINGS_MODULE")}
    env.update(L2_VAR_DIR=str(var), L2_PORT=str(port), L2_EMULATOR_PORT=str(emulator), L2_VENV=sys.prefix,
               SECRET_KEY=env.get("SECRET_KEY") or "bench-up")
    log = var / "up.log"
    up = subprocess.Popen([sys.executable, str(ROOT / "l2"), "up"], cwd=ROOT, env=env, stdout=open(log, "w"),
                          stderr=subprocess.STDOUT, start_new_session=True)
    sampler = Sampler(up.pid, var / "pgdata")
    sampler.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                if requests.get(base + "/readyz", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            if up.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("l2 up did not become ready:\n" + log.read_text()[-4000:])
            time.sleep(1)
        ready = time.monotonic()
        did = use(base, var, seconds)
        used = time.monotonic() - ready
    finally:
        sampler.stopping.set()
        sampler.join()
        if up.poll() is None:
            up.send_signal(signal.SIGINT)
            try:
                up.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(up.pid, signal.SIGKILL)
    return {"pss": sampler.peak_pss / 1024, "rss": sampler.peak_rss / 1024, "rows": sampler.at_peak,
            "top_packages": sampler.top_packages,
            "samples": sampler.samples, "did": did, "used": used, "log": log}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="starts of l2 up")
    parser.add_argument("--use-seconds", type=float, default=60.0, help="seconds of page loads after the scan")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}")
    runs = []
    for r in range(args.repeat):
        run = one_start(args.use_seconds)
        runs.append(run)
        print(f"\nrun {r + 1} (load {os.getloadavg()[0]:.2f}): {', '.join(run['did'])} in {run['used']:.0f} s, "
              f"{run['samples']} samples; peak PSS sum {run['pss']:.0f} MiB, peak RSS sum {run['rss']:.0f} MiB")
        print(f"  {'pid':>7} {'PSS MiB':>8} {'RSS MiB':>8}  process (at the PSS peak)")
        for pid, name, pss, rss in run["rows"]:
            print(f"  {pid:>7} {pss / 1024:>8.1f} {rss / 1024:>8.1f}  {name}")
        if run["rows"]:
            print(f"  the biggest ({run['rows'][0][0]}) has the compiled libraries of: {', '.join(run['top_packages'])}")
    pss = [r["pss"] for r in runs]
    rss = [r["rss"] for r in runs]
    print(f"\n{args.repeat} start(s) of l2 up     median   min   max  (MiB)")
    print(f"peak PSS sum          {statistics.median(pss):>8.0f} {min(pss):>5.0f} {max(pss):>5.0f}   "
          f"target < {TARGET_MB:.0f}: {'met' if max(pss) < TARGET_MB else 'NOT met'}")
    print(f"peak RSS sum          {statistics.median(rss):>8.0f} {min(rss):>5.0f} {max(rss):>5.0f}   (counts shared pages "
          f"in every process)")
    print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
