"""ingest_lines without a cluster: parsing, mapping, idempotence, malformed
lines, the watermark and the daily rollup."""
import logging
from collections import defaultdict
from datetime import datetime, timezone

import pytest

from accounting import services
from accounting.models import DailyUsage, IngestWatermark, UsageRecord
from jobs.models import Job

from .conftest import SEP, T0, line, step

pytestmark = pytest.mark.django_db


def record(cluster, job_id):
    return UsageRecord.objects.get(cluster=cluster, job_id=job_id)


def snapshot(cluster):
    fields = [f.attname for f in UsageRecord._meta.fields]
    return list(UsageRecord.objects.filter(cluster=cluster).order_by("job_id").values_list(*fields))


def test_fields_units_and_steps(offline):
    c = offline.cluster
    lines = [
        line("100", name="sim", cpus=4, elapsed=1800, reqmem="8G", exit="3:0", state="FAILED",
             tres="billing=4,cpu=4,gres/gpu=2,gres/gpu:a100=2,node=1"),
        step("100.batch", "2048K"), step("100.extern", "100K"), step("100.0", "3G"),
        line("101_4", name="arr", state="CANCELLED by 1001", exit="0:15", reqmem="500Mc", cpus=2, elapsed=0,
             start="Unknown"),
        line("102", tres="cpu=1,gres/gpu:v100=1,gres/gpu:a100=3", reqmem=""),
        step("100.1", "5000M"),  # a step apart from its allocation still counts
    ]
    result = services.ingest_lines(c, lines)

    assert (result.records, result.inserted, result.updated, result.malformed) == (3, 3, 0, 0)
    r = record(c, "100")
    assert (r.state, r.exit_code, r.exit_signal, r.alloc_cpus, r.alloc_gpus) == ("FAILED", 3, 0, 4, 2)
    assert (r.elapsed_seconds, r.cpu_seconds, r.req_mem_mb, r.max_rss_mb) == (1800, 7200, 8192, 5000)
    assert r.core_hours == 2 and r.gpu_hours == 1
    assert r.end == datetime.fromtimestamp(T0 + 3600, tz=timezone.utc)
    assert r.start == datetime.fromtimestamp(T0 + 1800, tz=timezone.utc)
    a = record(c, "101_4")
    assert (a.state, a.exit_code, a.exit_signal, a.req_mem_mb, a.start, a.max_rss_mb) == (
        "CANCELLED", 0, 15, 1000, None, None)
    g = record(c, "102")
    assert (g.alloc_gpus, g.req_mem_mb) == (4, None)


def test_mapping_users_projects_and_portal_jobs(offline):
    c = offline.cluster
    job = Job.objects.create(project=offline.alpha, owner=offline.alice, cluster=c, name="mine", script="true")
    other = Job.objects.create(project=offline.alpha, owner=offline.alice, cluster=c, name="x", script="true")
    lines = [
        line("1", user="ada", account="alpha", name=job.slurm_name),  # slug, portal job
        line("2", user="bert", account="beta-acct"),  # ClusterAccount
        line("3", user="bert", account="beta"),  # Beta's slug, but Beta is mapped to beta-acct on this cluster
        line("4", user="zoe", account="alpha"),  # nobody's POSIX name
        line("5", user="ada", account="gamma"),  # unknown account
        line("6", name=f"nephele-{other.pk}-000000000000"),  # right id, wrong random part: not ours
        line("7_1", name=job.slurm_name), line("7_2", name=job.slurm_name),  # array tasks of one portal job
    ]
    services.ingest_lines(c, lines)

    def mapped(job_id):
        r = record(c, job_id)
        return r.user, r.project, r.portal_job, r.unmapped

    assert mapped("1") == (offline.alice, offline.alpha, job, False)
    assert mapped("2") == (offline.bob, offline.beta, None, False)
    assert mapped("3") == (offline.bob, None, None, True)
    assert mapped("4") == (None, offline.alpha, None, True)
    assert mapped("5") == (offline.alice, None, None, True)
    assert mapped("6")[2] is None
    assert mapped("7_1")[2] == mapped("7_2")[2] == job
    r = record(c, "4")
    assert (r.posix_user, r.account) == ("zoe", "alpha")  # kept as reported
    assert list(job.usage_records.order_by("job_id").values_list("job_id", flat=True)) == ["1", "7_1", "7_2"]


def test_reingest_changes_nothing_and_updates_what_changed(offline):
    c = offline.cluster
    lines = [line(str(i), cpus=i, user="ada" if i % 2 else "bert") for i in range(1, 30)] + [step("3.batch", "10M")]
    first = services.ingest_lines(c, lines)
    before = snapshot(c)
    rollup_before = list(DailyUsage.objects.order_by("pk").values_list("pk", "day", "resource", "amount", "updated"))

    again = services.ingest_lines(c, lines)

    assert (first.inserted, again.inserted, again.updated, again.unchanged, again.days) == (29, 0, 0, 29, [])
    assert snapshot(c) == before  # not even `updated` moved
    assert list(DailyUsage.objects.order_by("pk").values_list("pk", "day", "resource", "amount", "updated")) \
        == rollup_before

    # A new account mapping and a corrected record change exactly those rows.
    changed = services.ingest_lines(c, [line("5", cpus=5, elapsed=120, user="ada")])
    assert (changed.inserted, changed.updated) == (0, 1)
    assert record(c, "5").cpu_seconds == 600
    assert UsageRecord.objects.filter(cluster=c).count() == 29


def test_malformed_lines_are_counted_logged_and_never_fatal(offline, caplog):
    c = offline.cluster
    good = [line("10"), line("11"), line("12_3")]
    garbage = [
        "complete garbage",
        SEP.join(["13", "too", "few"]),
        line("14", cpus="many"),
        line("15", end="yesterday"),
        line("16", exit="oops"),
        line("abc"),
        line("17", elapsed=-5),
        line("18", name="nul\x00byte"),
        line("19", end=10 ** 13),  # far beyond any timestamp PostgreSQL accepts
        line("20", cpus=10 ** 12),  # beyond integer
        step("x.batch", "1K"),
    ]
    lines = [good[0], *garbage[:6], good[1], "", "   ", *garbage[6:], good[2]]
    with caplog.at_level(logging.WARNING, logger="accounting.ingest"):
        result = services.ingest_lines(c, lines)

    assert (result.records, result.inserted, result.malformed) == (3, 3, len(garbage))
    assert set(UsageRecord.objects.filter(cluster=c).values_list("job_id", flat=True)) == {"10", "11", "12_3"}
    mark = IngestWatermark.objects.get(cluster=c)
    assert (mark.last_rows, mark.last_malformed, mark.malformed_total) == (3, len(garbage), len(garbage))
    [message] = [r.getMessage() for r in caplog.records if "malformed" in r.getMessage()]
    assert f"{len(garbage)} malformed line(s)" in message and "'complete garbage'" in message


def test_odd_but_valid_lines(offline):
    c = offline.cluster
    lines = [
        line("30", name=f"with{SEP}separator"),  # the delimiter inside a job name
        line("31", name="back\\slash\ttab"),
        line("32", end="2026-09-21T15:00:00", start="2026-09-21T14:00:00", submit="2026-09-21T13:00:00"),
        line("33", state="RUNNING", end="Unknown"),  # not finished: skipped, not malformed
        line("34", cpus=1), line("34", cpus=3),  # twice in one batch: the last wins
        line("35_[0-2]", state="CANCELLED by 1001", elapsed=0, tres=""),  # array tasks cancelled while pending
    ]
    result = services.ingest_lines(c, lines)

    assert (result.records, result.malformed, result.skipped) == (5, 0, 1)
    assert record(c, "30").job_name == f"with{SEP}separator"
    assert record(c, "31").job_name == "back\\slash\ttab"
    assert record(c, "32").end == datetime(2026, 9, 21, 15, tzinfo=timezone.utc)
    assert record(c, "34").alloc_cpus == 3
    # '|' as the delimiter (sacct's default) works too.
    pipe = services.ingest_lines(c, [line("40", sep="|", name="pipe|name")])
    assert (pipe.records, pipe.malformed) == (1, 0) and record(c, "40").job_name == "pipe|name"


def test_watermark_only_moves_forward(offline):
    c = offline.cluster
    services.ingest_lines(c, [line("50", end=T0 + 7200)])
    mark = IngestWatermark.objects.get(cluster=c)
    assert mark.last_end == datetime.fromtimestamp(T0 + 7200, tz=timezone.utc)
    services.ingest_lines(c, [line("49", end=T0)])  # older, late
    services.ingest_lines(c, [])
    mark.refresh_from_db()
    assert mark.last_end == datetime.fromtimestamp(T0 + 7200, tz=timezone.utc)
    assert UsageRecord.objects.filter(cluster=c).count() == 2
    assert mark.rows_total == 2


def rollup_from_records(cluster):
    sums = defaultdict(float)
    for r in UsageRecord.objects.filter(cluster=cluster):
        key = (r.end.astimezone(timezone.utc).date(), r.project_id, r.user_id)
        sums[key + ("core_hours",)] += r.cpu_seconds / 3600
        sums[key + ("jobs",)] += 1
        if r.alloc_gpus * r.elapsed_seconds:
            sums[key + ("gpu_hours",)] += r.alloc_gpus * r.elapsed_seconds / 3600
    return dict(sums)


def rollup_rows(cluster):
    return {(d.day, d.project_id, d.user_id, d.resource): d.amount
            for d in DailyUsage.objects.filter(cluster=cluster)}


def test_rollup_equals_the_sums_of_records(offline):
    c = offline.cluster
    day = 86400
    lines = []
    for i in range(60):
        user = ("ada", "bert", "zoe")[i % 3]
        account = ("alpha", "beta-acct", "nope")[i % 4 % 3]
        gpus = i % 5 == 0
        lines.append(line(str(1000 + i), user=user, account=account, cpus=1 + i % 7, elapsed=100 + 37 * i,
                          end=T0 + (i % 3) * day + i, tres="cpu=1,gres/gpu=2" if gpus else None))
    services.ingest_lines(c, lines)

    assert pytest.approx(rollup_rows(c)) == rollup_from_records(c)
    assert len({k[0] for k in rollup_rows(c)}) == 3

    # A record moves to another day and changes: both days are rebuilt.
    moved = services.ingest_lines(c, [line("1000", user="ada", cpus=2, elapsed=7200, end=T0 + 5 * day)])
    assert len(moved.days) == 2
    assert pytest.approx(rollup_rows(c)) == rollup_from_records(c)

    # Rebuilding by hand gives the same rows; other clusters' rows are left alone.
    before = rollup_rows(c)
    DailyUsage.objects.filter(cluster=c).update(amount=-1)
    services.rollup_days(sorted({k[0] for k in before}))
    assert rollup_rows(c) == before
