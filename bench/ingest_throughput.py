"""Accounting ingest throughput: accounting ingest_lines vs a plain COPY.

Run with PostgreSQL up (source .testbed/env, then
`python bench/ingest_throughput.py [-n LINES]`). Uses its own database
(nephele_bench_acct, created and migrated here; nothing else is touched).

It generates N realistic `sacct -a --parsable2` lines as
SlurmClient.accounting_window returns them (500 users, 120 accounts of which
some are unmapped, 5 partitions, a weighted mix of final states incl.
'CANCELLED by <uid>', 20% array tasks '123_4', GPUs on the gpu partition, 30
days of end times, a `.batch` step row carrying MaxRSS for --steps of the
jobs, portal job names for some), then in one run measures
  (a) ingest: accounting.services.ingest_lines end to end -- parse, map users,
      projects and portal jobs, binary COPY of chunks of new records straight
      into the table while the next chunk is parsed, rollup of the affected
      days, watermark -- into the empty tables (see accounting/ingest/);
  (b) copy: the same records (as final column values, rendered to COPY text
      beforehand, outside the timing) loaded with one `COPY ... FROM STDIN`
      into a bare table with UsageRecord's columns and no index or constraint;
and prints both rates in records/s and their ratio (target >= 0.5). Then it
re-ingests the same lines once more (which must change nothing) and prints
that time too.
"""
import argparse
import os
import random
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BENCH_DB = "nephele_bench_acct"
SEP = "\x1f"

STATES = [("COMPLETED", 70), ("FAILED", 10), ("CANCELLED by {uid}", 8), ("TIMEOUT", 7), ("OUT_OF_MEMORY", 3),
          ("NODE_FAIL", 1), ("PREEMPTED", 1)]
PARTITIONS = ["cpu", "cpu", "cpu", "long", "gpu", "debug"]


def setup_django():
    base = os.environ["DATABASE_URL"].rsplit("/", 1)[0]
    subprocess.run(["psql", f"{base}/postgres", "-qc", f"CREATE DATABASE {BENCH_DB}"],
                   capture_output=True)  # fails harmlessly when it exists
    os.environ["DATABASE_URL"] = f"{base}/{BENCH_DB}"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def fixtures(n_users=500, n_accounts=120):
    """A cluster; users u0000.. with POSIX names on it (the last 5% without a
    portal user); projects p000.. (every 3rd through a ClusterAccount
    'acct-p000', the others by slug; the last 10% of accounts unknown)."""
    from django.contrib.auth import get_user_model

    from accounting.models import DailyUsage, IngestWatermark, UsageRecord
    from clusters.models import ClusterAccount, PosixAccount, SlurmCluster
    from projects.models import Project

    User = get_user_model()
    cluster, _ = SlurmCluster.objects.get_or_create(name="bench-acct", defaults=dict(
        ssh_user="nephele", ssh_private_key="-", known_hosts="-"))
    # Start from empty tables: DELETE leaves dead rows behind (and autovacuum
    # may be off), which would slow every later run's ingest but not the baseline.
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {UsageRecord._meta.db_table}, {DailyUsage._meta.db_table}, "
                       f"{IngestWatermark._meta.db_table}")
    mapped_users = int(n_users * 0.95)
    if User.objects.filter(username__startswith="benchu").count() < mapped_users:
        User.objects.bulk_create([User(username=f"benchu{i:04d}", email=f"benchu{i:04d}@example.org")
                                  for i in range(mapped_users)], ignore_conflicts=True)
    users = {u.username: u for u in User.objects.filter(username__startswith="benchu")}
    PosixAccount.objects.bulk_create(
        [PosixAccount(user=users[f"benchu{i:04d}"], cluster=cluster, username=f"u{i:04d}")
         for i in range(mapped_users)], ignore_conflicts=True)
    known = int(n_accounts * 0.9)
    Project.objects.bulk_create([Project(slug=f"p{i:03d}", name=f"Bench {i}") for i in range(known)],
                                ignore_conflicts=True)
    projects = {p.slug: p for p in Project.objects.filter(slug__regex=r"^p[0-9]{3}$")}
    ClusterAccount.objects.bulk_create(
        [ClusterAccount(cluster=cluster, project=projects[f"p{i:03d}"], account=f"acct-p{i:03d}")
         for i in range(0, known, 3)], ignore_conflicts=True)
    accounts = [f"acct-p{i:03d}" if i % 3 == 0 else f"p{i:03d}" for i in range(n_accounts)]
    return cluster, [f"u{i:04d}" for i in range(n_users)], accounts


def generate(n_lines, users, accounts, *, steps=0.25, seed=42):
    """n_lines sacct lines (allocation rows plus a .batch step for `steps` of
    the jobs), time-ordered like sacct's output."""
    rng = random.Random(seed)
    states = [s for s, w in STATES for _ in range(w)]
    t_end = int(datetime(2026, 11, 1, tzinfo=timezone.utc).timestamp())
    t0 = t_end - 30 * 86400
    lines = []
    append = lines.append
    affinity = {}  # a user works in 1-3 accounts
    job = 1_000_000
    array_job = None
    while len(lines) < n_lines:
        job += 1
        if array_job is not None and rng.random() < 0.8:
            array_job[1] += 1
            job_id = f"{array_job[0]}_{array_job[1]}"
            job -= 1
        elif rng.random() < 0.04:
            array_job = [job, 0]
            job_id = f"{job}_0"
        else:
            array_job = None
            job_id = str(job)
        user = rng.choice(users)
        mine = affinity.setdefault(user, rng.sample(accounts, rng.choice((1, 1, 2, 3))))
        account = rng.choice(mine)
        partition = rng.choice(PARTITIONS)
        state = rng.choice(states).format(uid=1000 + rng.randrange(600))
        cpus = rng.choice((1, 1, 2, 4, 8, 16, 32, 64))
        gpus = rng.choice((1, 2, 4)) if partition == "gpu" else 0
        elapsed = int(rng.expovariate(1 / 3600)) if not state.startswith("CANCELLED") or rng.random() < 0.5 else 0
        end = t0 + (t_end - t0) * len(lines) // n_lines + rng.randrange(60)
        start = end - elapsed
        submit = start - rng.randrange(7200)
        exit_code = "0:0" if state == "COMPLETED" else rng.choice(("1:0", "2:0", "0:9", "0:15", "127:0"))
        tres = f"billing={cpus},cpu={cpus},mem={cpus * 4000}M,node=1" + (f",gres/gpu={gpus}" if gpus else "")
        name = (f"nephele-{rng.randrange(1, 10**6)}-{rng.getrandbits(48):012x}" if rng.random() < 0.3
                else rng.choice(("train.sh", "sim", "analysis-{}", "bash", "python3 run.py")).format(job))
        mem = f"{cpus * 4000}M"
        append(SEP.join((job_id, name, user, account, partition, state, exit_code, str(cpus), tres,
                         str(elapsed), str(elapsed * cpus), mem, str(submit), str(start), str(end), "")))
        if rng.random() < steps and len(lines) < n_lines:
            append(SEP.join((f"{job_id}.batch", "batch", "", account, "", state.split()[0], exit_code, str(cpus),
                             f"cpu={cpus},mem=0,node=1", str(elapsed), str(elapsed * cpus), "", str(submit),
                             str(start), str(end), f"{rng.randrange(1, 4 * 1024 * 1024)}K")))
    return lines


def copy_rate(cluster_id, records):
    """The ingested records, dumped with COPY TO (not timed), loaded again
    with one COPY FROM STDIN into a bare table with UsageRecord's columns."""
    from django.db import connection, transaction

    raw = connection.connection.cursor()
    data = bytearray()
    with raw.copy(f"COPY (SELECT {BARE_COLUMNS} FROM accounting_usagerecord WHERE cluster_id = {int(cluster_id)}) "
                  "TO STDOUT") as copy:
        for chunk in copy:
            data += chunk
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS bench_bare_usage")
        cursor.execute("CREATE TABLE bench_bare_usage (LIKE accounting_usagerecord INCLUDING IDENTITY)")  # no index
    data = bytes(data)
    t0 = time.perf_counter()
    with transaction.atomic():
        with raw.copy(f"COPY bench_bare_usage ({BARE_COLUMNS}) FROM STDIN") as copy:
            for i in range(0, len(data), 1 << 20):
                copy.write(data[i:i + (1 << 20)])
    elapsed = time.perf_counter() - t0
    raw.close()
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM bench_bare_usage")
        assert cursor.fetchone()[0] == records
        cursor.execute("DROP TABLE bench_bare_usage")
    return elapsed


BARE_COLUMNS = ("cluster_id, job_id, job_name, user_id, posix_user, project_id, account, partition, state, "
                "exit_code, exit_signal, alloc_cpus, alloc_gpus, elapsed_seconds, cpu_seconds, req_mem_mb, "
                "max_rss_mb, submit, start, \"end\", portal_job_id, unmapped, ingested, updated")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=1_000_000, help="sacct lines (default 1,000,000)")
    parser.add_argument("--steps", type=float, default=0.25, help="share of jobs with a .batch step row (0.25)")
    args = parser.parse_args()
    setup_django()

    from accounting import ingest, services
    from accounting.models import DailyUsage, UsageRecord

    cluster, users, accounts = fixtures()
    t = time.perf_counter()
    lines = generate(args.n, users, accounts, steps=args.steps)
    print(f"generated {len(lines):,} lines in {time.perf_counter() - t:.1f} s")
    from django.db import connection

    users, projects = ingest.load_maps(cluster.pk)
    with connection.cursor() as cursor:
        jobs = ingest._portal_jobs(cursor, cluster.pk, len(lines))  # as the ingest reads them
    formatting = connection.connection.cursor()  # rows formatted for COPY, as in the ingest (nothing is sent)
    t0 = time.perf_counter()
    for _ in ingest.parse(lines, ingest.Batch(), users=users, projects=projects, cluster_id=cluster.pk,
                          cursor=formatting, jobs=jobs):
        pass
    t_parse = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = services.ingest_lines(cluster, lines)
    t_ingest = time.perf_counter() - t0
    records = result.records
    assert UsageRecord.objects.filter(cluster=cluster).count() == records == result.inserted
    unmapped = UsageRecord.objects.filter(cluster=cluster, unmapped=True).count()
    rollups = DailyUsage.objects.filter(cluster=cluster).count()

    t0 = time.perf_counter()
    again = services.ingest_lines(cluster, lines)
    t_again = time.perf_counter() - t0
    assert again.inserted == again.updated == 0 and not again.days

    t_copy = copy_rate(cluster.pk, records)

    ingest_rate, copy_rate_ = records / t_ingest, records / t_copy
    print(f"{len(lines):,} lines -> {records:,} job records ({result.malformed} malformed, {unmapped:,} unmapped), "
          f"{len(result.days)} days -> {rollups:,} DailyUsage rows")
    print(f"ingest_lines:                 {t_ingest:6.2f} s  {ingest_rate:10,.0f} records/s  "
          f"({len(lines) / t_ingest:,.0f} lines/s; parsing alone {t_parse:.1f} s, overlapped with the COPY)")
    print(f"plain COPY into a bare table: {t_copy:6.2f} s  {copy_rate_:10,.0f} records/s")
    print(f"re-ingest of the same lines (no change): {t_again:.2f} s")
    print(f"ratio ingest/COPY: {ingest_rate / copy_rate_:.2f}  (target >= 0.50)")
    report_page_timing(cluster)


def report_page_timing(cluster):
    """The project report page over these records (target: under 200 ms),
    for the project with the most usage, as staff, through the full stack."""
    import statistics

    from django.contrib.auth import get_user_model
    from django.db.models import Count
    from django.test import Client

    from accounting.models import UsageRecord
    from projects.models import Project

    top = (UsageRecord.objects.filter(cluster=cluster, project__isnull=False).values("project")
           .annotate(n=Count("id")).order_by("-n").first())
    project = Project.objects.get(pk=top["project"])
    staff = get_user_model().objects.filter(username="benchstaff").first() or get_user_model().objects.create_user(
        "benchstaff", email="benchstaff@example.org", is_staff=True)
    client = Client()
    client.force_login(staff)
    url = f"/reports/projects/{project.slug}/?start=2026-01-01&end=2026-12-31"
    timings = []
    for _ in range(6):
        t0 = time.perf_counter()
        response = client.get(url)
        timings.append(time.perf_counter() - t0)
        assert response.status_code == 200, response.status_code
    print(f"project report page ({top['n']:,} of the records in its project, a year's range): "
          f"median {statistics.median(timings[1:]) * 1000:.0f} ms over 5 warm requests (target < 200 ms)")


if __name__ == "__main__":
    main()
