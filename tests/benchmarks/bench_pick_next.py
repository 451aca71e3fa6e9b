"""Pick-next benchmark (DESIGN §13): 32 concurrent clients empty a queue of 2,000 programs.

    python tests/benchmarks/bench_pick_next.py            # 2,000 queued, 32 clients
    python tests/benchmarks/bench_pick_next.py --quick    # 300 queued, 32 clients
    python tests/benchmarks/bench_pick_next.py --queued 5000 --clients 16

Creates its own database (``l2_bench_pick`` on the server of ``DATABASE_URL``), migrates it,
drops it at the end (``--keep-db`` keeps it).

1. N programs are created with ``lifecycle.create_programs`` and walked Discovered →
   Invertible → Preprocessed → Queued (random priorities) with ``lifecycle.apply``, in bulk.
2. **Baseline**: the same number of threads, each with its own connection, empties a bare
   table of N queued rows: per transaction one ``SELECT … ORDER BY priority DESC, queued_at,
   id LIMIT 1 FOR UPDATE SKIP LOCKED`` and one ``UPDATE`` — no history, no outbox.
3. **Life-cycle**: the threads (each its own connection and its own science user) call
   ``lifecycle.claim_next`` until it returns None.
   The relay-on-commit is on (``EVENT_RELAY_ON_COMMIT``, as in production): each commit calls
   the life-cycle's outbox hook, which wakes the process's relay thread (``inversions.relay``);
   the relay tasks it sends (to ``CELERY_BROKER_URL``; no worker runs them here, they are purged
   at the end) are counted, the claims never wait for the broker.
4. Checks: every program has exactly one transition to Working, N in total, all programs are
   Working, no program was returned to two clients, and each claim wrote one history row and
   one outbox event (``l2.program.working``, linked to that row, its payload naming it).

Targets (issue 16): ≥ 25 % of the baseline's claims/s, 0 double claims, one history row and
one outbox event per claim. (The earlier absolute target, ≥ 200 claims/s, is printed too.)
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import _benchdb  # noqa: E402


def run_threads(clients: int, work) -> tuple[float, list[list], list[BaseException]]:
    """Start ``clients`` threads running ``work(index)`` together; wall time, results, errors."""
    from django.db import connection

    results: list[list] = [[] for _ in range(clients)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(clients + 1)

    def body(i: int) -> None:
        try:
            connection.ensure_connection()  # connect before the clock starts
            barrier.wait()
            results[i] = work(i)
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=body, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - start, results, errors


def make_queue(n: int, seed: int) -> None:
    from django.utils import timezone

    from inversions import lifecycle
    from inversions.models import ObservingProgram
    from inversions.states import State

    rng = random.Random(seed)
    start = timezone.now() - timedelta(days=400)
    programs = []
    for i in range(n):
        t0 = start + timedelta(minutes=17 * i)
        programs.append(ObservingProgram(
            instrument_program_execution_id=f"id.{200000 + i}.{rng.randint(100000, 999999)}",
            observing_program_execution_id=f"eid_2_114_op{i:05d}_R001.{rng.randint(10000, 99999)}",
            primary_proposal_id=f"pid_2_{100 + i % 40}",
            primary_experiment_id=f"eid_2_{100 + i % 40}",
            instrument_name="VISP",
            spectral_lines=["Fe I 630.15", "Fe I 630.25"] if i % 3 else ["Ca II 854.21"],
            start_time=t0, end_time=t0 + timedelta(minutes=40), dataset_count=3,
        ))
    lifecycle.create_programs(programs, actor="bench")
    ids = [p.pk for p in programs]
    for step in (State.INVERTIBLE, State.PREPROCESSED):
        lifecycle.apply([lifecycle.Change(pk, step, reason=f"bench: to {step}") for pk in ids],
                        actor="bench", returning=False)
    lifecycle.apply(
        [lifecycle.Change(pk, State.QUEUED, reason="bench: queue", priority=rng.choice((0, 0, 0, 1, 5))) for pk in ids],
        actor="bench", returning=False,
    )


def baseline(n: int, clients: int) -> tuple[float, list[int], list[BaseException]]:
    """The same threads claiming rows of a bare table: SKIP LOCKED select + update, nothing else."""
    from django.db import connection, transaction

    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS bench_plain_queue")
        cursor.execute(
            "CREATE TABLE bench_plain_queue (id bigserial PRIMARY KEY, state text NOT NULL, priority int NOT NULL, "
            "queued_at timestamptz NOT NULL, claimed_by int, claimed_at timestamptz)"
        )
        cursor.execute(
            "INSERT INTO bench_plain_queue (state, priority, queued_at) "
            "SELECT 'queued', (ARRAY[0,0,0,1,5])[1 + g %% 5], now() - g * interval '1 second' FROM generate_series(1, %s) g",
            [n],
        )
        cursor.execute(
            "CREATE INDEX bench_plain_queue_order ON bench_plain_queue (priority DESC, queued_at, id) WHERE state = 'queued'"
        )
        cursor.execute("ANALYZE bench_plain_queue")
    connection.close()

    def work(i: int) -> list[int]:
        mine = []
        while True:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(
                    "SELECT id FROM bench_plain_queue WHERE state = 'queued' ORDER BY priority DESC, queued_at, id "
                    "LIMIT 1 FOR UPDATE SKIP LOCKED"
                )
                row = cursor.fetchone()
                if row is None:
                    return mine
                cursor.execute(
                    "UPDATE bench_plain_queue SET state = 'working', claimed_by = %s, claimed_at = now() WHERE id = %s",
                    [i, row[0]],
                )
                mine.append(row[0])

    seconds, results, errors = run_threads(clients, work)
    return seconds, [pk for r in results for pk in r], errors


def lifecycle_run(clients: int) -> tuple[float, list[int], list[BaseException]]:
    from django.contrib.auth.models import Group, User

    from inversions import lifecycle

    science = Group.objects.get_or_create(name="science")[0]
    users = []
    for i in range(clients):
        user = User.objects.create_user(f"bench-sci-{i:02d}", password=None)
        user.groups.add(science)
        users.append(user)

    def work(i: int) -> list[int]:
        mine = []
        while True:
            program = lifecycle.claim_next(user=users[i])
            if program is None:
                return mine
            mine.append(program.pk)

    seconds, results, errors = run_threads(clients, work)
    return seconds, [pk for r in results for pk in r], errors


def check(n: int, claimed: list[int]) -> dict:
    from django.db.models import Count

    from inversions.models import ObservingProgram, OutboxEvent, Transition
    from inversions.states import State

    per_program = Counter(
        dict(Transition.objects.filter(to_state=State.WORKING).values_list("program").annotate(n=Count("id")))
    )
    returned = Counter(claimed)
    return {
        "working transitions": sum(per_program.values()),
        "programs with >1 working transition": sum(1 for v in per_program.values() if v > 1),
        "programs with 0 working transitions": ObservingProgram.objects.exclude(pk__in=list(per_program)).count(),
        "programs returned to >1 client": sum(1 for v in returned.values() if v > 1),
        "programs not Working": ObservingProgram.objects.exclude(state=State.WORKING).count(),
        "programs without a claimant": ObservingProgram.objects.filter(claimed_by__isnull=True).count(),
        "distinct claimants": ObservingProgram.objects.values("claimed_by").distinct().count(),
        "outbox events for working": OutboxEvent.objects.filter(routing_key="l2.program.working").count(),
        # each Working transition with exactly one event, linked to it and naming it in its payload
        "working transitions without their event": Transition.objects.filter(to_state=State.WORKING)
        .exclude(event__routing_key="l2.program.working").count(),
        "events not naming their transition": sum(
            1 for tid, payload in OutboxEvent.objects.filter(routing_key="l2.program.working")
            .values_list("transition_id", "payload") if payload.get("transition_id") != tid
            or payload.get("to") != State.WORKING),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queued", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="smoke run: 300 queued")
    parser.add_argument("--database", default="l2_bench_pick")
    parser.add_argument("--keep-db", action="store_true")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    n = 300 if args.quick else args.queued

    load = os.getloadavg()
    print(f"bench_pick_next: {n:,} queued, {args.clients} clients, {os.cpu_count()} CPUs, "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    print(f"  database {args.database} created and migrated in {_benchdb.create_database(args.database):.1f} s",
          flush=True)
    try:
        _benchdb.setup_django(args.database, EVENT_RELAY_ON_COMMIT="true")
        t = time.perf_counter()
        make_queue(n, args.seed)
        print(f"  {n:,} programs created and walked to Queued through the life-cycle in "
              f"{time.perf_counter() - t:.1f} s", flush=True)

        base_s, base_claimed, base_errors = baseline(n, args.clients)
        base_rate = len(base_claimed) / base_s
        base_double = sum(1 for v in Counter(base_claimed).values() if v > 1)
        print(f"  baseline (bare SKIP LOCKED + UPDATE): {len(base_claimed):,} claims in {base_s:.2f} s = "
              f"{base_rate:,.0f} claims/s, {base_double} double, {len(base_errors)} errors", flush=True)

        from inversions import relay

        kicks_before = relay.waker.sent
        life_s, claimed, errors = lifecycle_run(args.clients)
        time.sleep(0.5)  # the waker's last send
        kicks = relay.waker.sent - kicks_before
        rate = len(claimed) / life_s
        print(f"  life-cycle claim_next: {len(claimed):,} claims in {life_s:.2f} s = {rate:,.0f} claims/s, "
              f"{len(errors)} errors", flush=True)
        for exc in errors[:5]:
            print(f"    error: {type(exc).__name__}: {exc}", flush=True)
        print(f"  relay tasks sent by the relay-on-commit: {kicks} for {len(claimed):,} claims", flush=True)
        checks = check(n, claimed)
        for name, value in checks.items():
            print(f"    {name}: {value}")
    finally:
        purge_relay_tasks()
        from django.db import connections

        connections.close_all()
        if not args.keep_db:
            _benchdb.drop_database(args.database)

    double = checks["programs with >1 working transition"] + checks["programs returned to >1 client"]
    complete = (checks["working transitions"] == n and checks["programs with 0 working transitions"] == 0
                and checks["programs not Working"] == 0 and len(claimed) == n and not errors)
    one_each = (checks["outbox events for working"] == n and checks["working transitions without their event"] == 0
                and checks["events not naming their transition"] == 0 and checks["working transitions"] == n)
    ratio = rate / base_rate
    ok_ratio, ok_double = ratio >= 0.25, double == 0 and complete
    load = os.getloadavg()
    print()
    print(f"  {'what':<34}{'measured':>14}{'baseline':>14}{'ratio':>9}  target")
    print(f"  {f'claims/s ({args.clients} clients)':<34}{rate:>14,.0f}{base_rate:>14,.0f}{ratio:>8.0%}  "
          f">= 25 % {'OK' if ok_ratio else 'MISSED'} (>= 200/s {'OK' if rate >= 200 else 'MISSED'})")
    print(f"  {'double claims':<34}{double:>14}{base_double:>14}{'':>9}  0 {'OK' if ok_double else 'MISSED'}"
          f"{'' if complete else ' (incomplete: see checks)'}")
    rows = f"{checks['working transitions']:,} / {checks['outbox events for working']:,}"
    print(f"  {'history rows / outbox events':<34}{rows:>14}{'':>23}  1 each per claim {'OK' if one_each else 'MISSED'}")
    print(f"  load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return 0 if ok_ratio and ok_double and one_each else 1


def purge_relay_tasks() -> None:
    """Drop the relay tasks the run sent (no worker consumed them)."""
    try:
        from l2site.celery import app

        app.control.purge()
    except Exception as exc:  # noqa: BLE001 - a leftover message only relays an empty outbox
        print(f"  (relay tasks not purged: {exc})")


if __name__ == "__main__":
    sys.exit(main())
