"""ingest_lines on batches of many chunks (tiny chunks here): new records
COPYed straight into the table, chunks with stored job ids merged (only what
changed is written), the sampled look-up that misses, duplicates, malformed
lines among good ones, steps away from their job, and the rollup."""
import logging
from collections import defaultdict
from datetime import datetime, timezone

import pytest

from accounting import ingest, services
from accounting.models import DailyUsage, IngestWatermark, UsageRecord
from clusters.models import ClusterAccount, PosixAccount, SlurmCluster
from jobs.models import Job

from .conftest import SEP, T0, line, step

pytestmark = pytest.mark.django_db
DAY = 86400


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of ~40 lines, one id in 8 sampled."""
    monkeypatch.setattr(ingest.parsing, "CHUNK_LINES", 40)
    monkeypatch.setattr(ingest.parsing, "SAMPLE_EVERY", 8)


def jobs(first, n, changes=None):
    """n allocation lines from job id `first` (every 4th an array task
    '<i>_<i % 7>'), over three days, users ada/bert/zoe (i % 3; zoe has no
    portal user), accounts alpha/beta-acct/nope (i % 4 % 3; nope is no
    project's), 2 GPUs every 5th; every third job (i % 3 == 0) with a .batch
    step right after it. `changes`: {i: line() arguments} for some jobs."""
    out = []
    for i in range(first, first + n):
        job_id = f"{i}_{i % 7}" if i % 4 == 0 else str(i)
        values = dict(user=("ada", "bert", "zoe")[i % 3], account=("alpha", "beta-acct", "nope")[i % 4 % 3],
                      cpus=1 + i % 5, elapsed=60 + i % 1000, end=T0 + (i % 3) * DAY + i % 1000,
                      tres="cpu=1,gres/gpu=2" if i % 5 == 0 else None)
        values.update((changes or {}).get(i, {}))
        out.append(line(job_id, **values))
        if i % 3 == 0:
            out.append(step(f"{job_id}.batch", f"{1000 + i}K", end=values["end"]))
    return out


def at(lines, job_id):
    """Where the line of job `job_id` is (inserting there keeps steps with their job)."""
    return next(k for k, text in enumerate(lines) if text.startswith((f"{job_id}{SEP}", f"{job_id}_")))


def snapshot(cluster):
    fields = [f.attname for f in UsageRecord._meta.fields]
    return list(UsageRecord.objects.filter(cluster=cluster).order_by("job_id").values_list(*fields))


def values(cluster):
    """The records without what differs between clusters and runs (id, cluster, portal job, times of the ingest)."""
    skip = {"id", "cluster_id", "portal_job_id", "ingested", "updated"}
    fields = [f.attname for f in UsageRecord._meta.fields if f.attname not in skip]
    return list(UsageRecord.objects.filter(cluster=cluster).order_by("job_id").values_list(*fields))


def rollup_rows(cluster):
    return {(d.day, d.project_id, d.user_id, d.resource): d.amount for d in DailyUsage.objects.filter(cluster=cluster)}


def rollup_from_records(cluster):
    sums = defaultdict(int)
    for r in UsageRecord.objects.filter(cluster=cluster):
        key = (r.end.astimezone(timezone.utc).date(), r.project_id, r.user_id)
        sums[key + ("core_hours",)] += r.cpu_seconds
        sums[key + ("jobs",)] += 3600
        if r.alloc_gpus * r.elapsed_seconds:
            sums[key + ("gpu_hours",)] += r.alloc_gpus * r.elapsed_seconds
    return {key: total / 3600 for key, total in sums.items()}


def daily(cluster):
    return list(DailyUsage.objects.filter(cluster=cluster).order_by("pk").values_list("pk", "amount", "updated"))


def test_many_chunks_go_straight_in_and_reingest_writes_nothing(offline, small_chunks):
    c = offline.cluster
    lines = jobs(1000, 300)
    assert len(list(ingest._blocks(lines, SEP))) > 8

    first = services.ingest_lines(c, lines)

    assert (first.records, first.inserted, first.updated, first.malformed) == (300, 300, 0, 0)
    assert len(first.days) == 3
    assert rollup_rows(c) == pytest.approx(rollup_from_records(c))
    r = UsageRecord.objects.get(cluster=c, job_id="1007")  # zoe (no portal user), alpha: kept, flagged
    assert (r.user, r.posix_user, r.project, r.account, r.unmapped) == (None, "zoe", offline.alpha, "alpha", True)
    r = UsageRecord.objects.get(cluster=c, job_id="1050")  # ada, an account nobody maps
    assert (r.user, r.project, r.account, r.unmapped, r.alloc_gpus) == (offline.alice, None, "nope", True, 2)
    r = UsageRecord.objects.get(cluster=c, job_id="1005")  # ada, Beta through its ClusterAccount
    assert (r.user, r.project, r.unmapped) == (offline.alice, offline.beta, False)
    assert UsageRecord.objects.get(cluster=c, job_id="1000_6").job_name == "work"
    assert UsageRecord.objects.get(cluster=c, job_id="1004_3").max_rss_mb is None  # no step
    assert UsageRecord.objects.get(cluster=c, job_id="1011").max_rss_mb == 2  # 2011K, from its step
    before, rollup_before = snapshot(c), daily(c)

    again = services.ingest_lines(c, lines)

    assert (again.records, again.inserted, again.updated, again.unchanged, again.days) == (300, 0, 0, 300, [])
    assert snapshot(c) == before  # not even `updated` moved
    assert daily(c) == rollup_before


def test_changed_rows_are_updated_and_nothing_else(offline, small_chunks):
    c = offline.cluster
    services.ingest_lines(c, jobs(1000, 300))
    job_id = [f.attname for f in UsageRecord._meta.fields].index("job_id")
    before = {r[job_id]: r for r in snapshot(c)}
    rollup_before = {(d.day, d.project_id, d.user_id, d.resource): (d.pk, d.updated) for d in DailyUsage.objects.all()}
    PosixAccount.objects.create(user=offline.mallory, cluster=c, username="zoe")  # zoe's 100 jobs get a user
    changes = {1003: dict(cpus=3), 1006: dict(end=T0 + 5 * DAY)}  # corrected; moved to another day

    result = services.ingest_lines(c, jobs(1000, 300, changes))

    assert (result.inserted, result.updated) == (0, 100 + 2)
    after = {r[job_id]: r for r in snapshot(c)}
    touched = {key for key in after if after[key] != before[key]}
    zoe = set(UsageRecord.objects.filter(cluster=c, posix_user="zoe").values_list("job_id", flat=True))
    assert len(zoe) == 100 and touched == zoe | {"1003", "1006"}
    assert not UsageRecord.objects.filter(cluster=c, posix_user="zoe").exclude(user=offline.mallory).exists()
    assert UsageRecord.objects.get(cluster=c, job_id="1003").cpu_seconds == 3 * 63
    days = {datetime.fromtimestamp(T0 + k * DAY, tz=timezone.utc).date() for k in (1, 2, 5)}
    assert set(result.days) == days  # zoe's (2), 1003's (1), 1006 left 1 for 5; day 0 untouched
    assert rollup_rows(c) == pytest.approx(rollup_from_records(c))
    day0 = {key: value for key, value in rollup_before.items() if key[0] not in days}
    assert day0 and all(DailyUsage.objects.get(pk=pk).updated == updated for pk, updated in day0.values())


def test_overlapping_windows_and_an_id_the_sample_misses(offline, small_chunks):
    c = offline.cluster
    services.ingest_lines(c, jobs(1000, 200))
    second = services.ingest_lines(c, jobs(1100, 200))  # the first 100 are there already
    assert (second.records, second.inserted, second.updated) == (200, 100, 0)
    assert UsageRecord.objects.filter(cluster=c).count() == 300

    # One stored id in the middle of an otherwise new chunk (the sample takes rows 0, 8, 16, ... and the last).
    lines = jobs(2000, 30)
    lines[3:3] = jobs(1050, 1)  # row 3, with its step
    third = services.ingest_lines(c, lines)
    assert (third.records, third.inserted, third.updated) == (31, 30, 0)
    lines[3:5] = jobs(1050, 1, {1050: dict(cpus=4)})
    fourth = services.ingest_lines(c, lines)
    assert (fourth.inserted, fourth.updated) == (0, 1)
    assert UsageRecord.objects.get(cluster=c, job_id="1050").alloc_cpus == 4
    assert rollup_rows(c) == pytest.approx(rollup_from_records(c))


def test_a_job_twice_the_last_line_wins(offline, small_chunks):
    c = offline.cluster
    lines = jobs(1000, 100)
    lines.insert(at(lines, 1006), line("1003", cpus=9, elapsed=10, end=T0))  # the chunk of 1003's first line
    lines.append(line("1001", cpus=7, elapsed=10, end=T0))  # the last chunk
    result = services.ingest_lines(c, lines)
    assert (result.records, result.inserted, result.updated) == (100, 100, 0)
    assert UsageRecord.objects.get(cluster=c, job_id="1003").alloc_cpus == 9
    assert UsageRecord.objects.get(cluster=c, job_id="1001").alloc_cpus == 7
    assert rollup_rows(c) == pytest.approx(rollup_from_records(c))


def test_malformed_and_unfinished_lines_among_many(offline, small_chunks, caplog):
    c = offline.cluster
    lines = jobs(1000, 120)
    garbage = ["garbage", line("9001", cpus="x"), SEP.join(["9002", "few"]), line("9003", end="yesterday"),
               line("9004", reqmem="999999999999P")]  # the last is fine: memory never rejects a row
    for k, text in enumerate(garbage):
        lines.insert(at(lines, 1001 + 25 * k), text)
    lines.insert(at(lines, 1070), line("9005", state="RUNNING", end="Unknown"))
    with caplog.at_level(logging.WARNING, logger="accounting.ingest"):
        result = services.ingest_lines(c, lines)
    assert (result.records, result.malformed, result.skipped) == (121, 4, 1)
    assert UsageRecord.objects.get(cluster=c, job_id="9004").req_mem_mb is None
    [message] = [r.getMessage() for r in caplog.records if "malformed" in r.getMessage()]
    assert "4 malformed line(s)" in message and "'garbage'" in message


def test_rollup_counts_records_already_there(offline, small_chunks):
    c = offline.cluster
    services.ingest_lines(c, jobs(1000, 90))
    services.ingest_lines(c, jobs(5000, 90))  # new ids, the same three days
    assert len({key[0] for key in rollup_rows(c)}) == 3
    assert rollup_rows(c) == pytest.approx(rollup_from_records(c))


def twin(offline, name):
    """Another offline cluster with the same mappings."""
    other = SlurmCluster.objects.create(name=name, ssh_user="nephele", ssh_private_key="-", known_hosts="-")
    PosixAccount.objects.create(user=offline.alice, cluster=other, username="ada")
    PosixAccount.objects.create(user=offline.bob, cluster=other, username="bert")
    ClusterAccount.objects.create(cluster=other, project=offline.beta, account="beta-acct")
    return other


def test_portal_jobs_matched_by_the_parser_or_by_the_loader(offline, small_chunks, monkeypatch):
    """Rows go to the loader as COPY binary data made while parsing, or as
    tuples; portal jobs are matched by the parser (the cluster's few jobs read
    up front) or looked up by the loader for each chunk. All the same; a
    portal job is matched on its cluster only."""
    c = offline.cluster
    clusters = [c, twin(offline, "twin"), twin(offline, "triplet")]
    lines = jobs(1000, 300)
    portal = {}
    for cluster in clusters:
        job = Job.objects.create(project=offline.alpha, owner=offline.alice, cluster=cluster, name="p", script="true")
        portal[cluster.pk] = job
        lines.insert(at(lines, 1041), line(f"77{cluster.pk}", user="ada", name=job.slurm_name))
    lines[at(lines, 1101):at(lines, 1101)] = [
        line("3001", end="2026-09-21T15:00:00", start="2026-09-21T14:00:00", submit=""), "garbage",
        line("3002", name=f"{portal[c.pk].slurm_name}{SEP}x"), line("3001", cpus=5),
        line("3003", name=portal[c.pk].slurm_name, end="2026-09-21T16:00:00", start="2026-09-21T15:00:00")]
    now = datetime(2026, 10, 1, tzinfo=timezone.utc)

    results = [services.ingest_lines(c, lines, now=now)]  # the parser matches
    monkeypatch.setattr(ingest, "_portal_jobs", lambda *args: None)  # the loader looks up
    results.append(services.ingest_lines(clusters[1], lines, now=now))
    parse = ingest.parse
    monkeypatch.setattr(ingest, "parse", lambda *args, cursor=None, **kwargs: parse(*args, **kwargs))  # tuples
    results.append(services.ingest_lines(clusters[2], lines, now=now))

    assert (results[0].records, results[0].inserted, results[0].malformed, results[0].lines) == (
        306, 306, 1, len(lines))
    for result in results[1:]:
        assert (result.records, result.inserted, result.malformed, result.lines, result.days, result.last_end) == (
            results[0].records, results[0].inserted, results[0].malformed, results[0].lines, results[0].days,
            results[0].last_end)
    for cluster in clusters:
        assert values(cluster) == values(c)  # portal jobs apart
        matched = UsageRecord.objects.filter(cluster=cluster, portal_job__isnull=False)
        expected = {f"77{cluster.pk}": portal[cluster.pk]} | ({"3003": portal[c.pk]} if cluster == c else {})
        assert {r.job_id: r.portal_job for r in matched} == expected
        assert rollup_rows(cluster) == rollup_rows(c)
    assert UsageRecord.objects.get(cluster=c, job_id="3001").alloc_cpus == 5
    assert UsageRecord.objects.get(cluster=c, job_id="3002").job_name == f"{portal[c.pk].slurm_name}{SEP}x"
    assert rollup_rows(c) == pytest.approx(rollup_from_records(c))
    again = services.ingest_lines(c, lines)
    assert (again.inserted, again.updated, again.days) == (0, 0, [])


def test_a_step_far_from_its_job(offline, small_chunks):
    c = offline.cluster
    lines = jobs(1000, 300)
    lines.append(step("1003.7", "9000000K"))  # after its job's chunk went: the batch is parsed again
    lines.insert(0, step("1290.extern", "4096K"))  # before its job
    result = services.ingest_lines(c, lines)
    assert (result.records, result.inserted, result.malformed) == (300, 300, 0)
    assert UsageRecord.objects.get(cluster=c, job_id="1003").max_rss_mb == 8790
    assert UsageRecord.objects.get(cluster=c, job_id="1290").max_rss_mb == 4
    assert UsageRecord.objects.get(cluster=c, job_id="1011").max_rss_mb == 2


def test_an_error_while_loading_leaves_nothing_behind(offline, small_chunks, monkeypatch):
    c = offline.cluster
    services.ingest_lines(c, jobs(1000, 50))
    before, rollup_before = snapshot(c), daily(c)
    mark = IngestWatermark.objects.get(cluster=c)
    monkeypatch.setattr(ingest.loading, "MERGE", "SELECT no_such_function()")
    with pytest.raises(Exception, match="no_such_function"):
        services.ingest_lines(c, jobs(1040, 200))  # its first chunk has stored ids: merged
    assert snapshot(c) == before and daily(c) == rollup_before
    assert IngestWatermark.objects.get(cluster=c).last_run == mark.last_run

    monkeypatch.undo()
    result = services.ingest_lines(c, jobs(1040, 200))  # the connection is fine
    assert (result.inserted, result.updated) == (190, 0)
