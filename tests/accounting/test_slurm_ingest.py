"""Accounting from the REAL Slurm test bed: jobs submitted through the portal
and outside it, ingested with the real sacct over SSH."""
import os
import subprocess
import time
import uuid

import pytest
from django.test import TestCase

from accounting import services, tasks
from accounting.models import DailyUsage, IngestWatermark, UsageRecord
from clusters.backends import ssh
from clusters.services import slurm_client
from jobs import services as job_services
from jobs.models import State

from .conftest import wait_for_state

FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"}


@pytest.fixture(autouse=True)
def _fresh_pools():
    ssh.close_all()
    yield
    ssh.close_all()


def portal_job(cast, **fields):
    defaults = dict(owner=cast.alice, project=cast.alpha, cluster=cast.cluster, name="acct",
                    script="#!/bin/bash\nsleep 3\n", time_limit_minutes=2)
    defaults.update(fields)
    with TestCase.captureOnCommitCallbacks(execute=True):
        job = job_services.job_create(**defaults)
    job.refresh_from_db()
    assert job.scheduler_id, job.reason
    return job


def outside_job(user, account, name):
    """sbatch on the command node (this machine) as `user`, not through the portal."""
    result = subprocess.run(
        ["sudo", "-n", "-u", user, "--preserve-env=SLURM_CONF", "sbatch", "--parsable", "-A", account, "-J", name,
         "--chdir=/tmp", "-o", "/dev/null", "-e", "/dev/null", "--wrap", "sleep 1"],
        capture_output=True, text=True, env={**os.environ, "SLURM_CONF": os.environ["SLURM_TEST_SLURM_CONF"]},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().split(";")[0]


def wait_in_accounting(cluster, job_ids, timeout=90):
    client = slurm_client(cluster)
    deadline = time.monotonic() + timeout
    while True:
        entries = client.accounting(job_ids)
        if all(j in entries and entries[j].state in FINAL and entries[j].end for j in job_ids):
            return entries
        if time.monotonic() > deadline:
            raise AssertionError(f"jobs not finished in slurmdbd: {entries}")
        time.sleep(1)


def values(records):
    fields = [f.attname for f in UsageRecord._meta.fields]
    return list(records.order_by("job_id").values_list(*fields))


def test_ingest_real_jobs_from_the_portal_and_outside(slurm):
    tag = uuid.uuid4().hex[:8]
    ada = portal_job(slurm, cpus=2, name=f"acct-ada-{tag}")
    bert = portal_job(slurm, owner=slurm.bob, project=slurm.beta, name=f"acct-bert-{tag}",
                      script="#!/bin/bash\nexit 2\n")
    outside = outside_job("bert", "beta", f"acct-outside-{tag}")
    stranger = outside_job(os.environ["SLURM_TEST_SSH_USER"], "alpha", f"acct-stranger-{tag}")
    ada = wait_for_state(ada, {State.COMPLETED, State.FAILED})
    bert = wait_for_state(bert, {State.COMPLETED, State.FAILED})
    assert (ada.state, bert.state) == (State.COMPLETED, State.FAILED)
    ids = [ada.scheduler_id, bert.scheduler_id, outside, stranger]
    sacct = wait_in_accounting(slurm.cluster, ids)

    results = services.ingest_cluster(slurm.cluster)

    assert sum(r.malformed for r in results) == 0
    records = {r.job_id: r for r in UsageRecord.objects.filter(cluster=slurm.cluster, job_id__in=ids)}
    assert set(records) == set(ids)
    a = records[ada.scheduler_id]
    assert (a.user, a.posix_user, a.project, a.account, a.portal_job, a.unmapped) == (
        slurm.alice, "ada", slurm.alpha, "alpha", ada, False)
    assert (a.state, a.exit_code, a.alloc_cpus, a.job_name) == ("COMPLETED", 0, 2, ada.slurm_name)
    assert a.cpu_seconds == sacct[ada.scheduler_id].cpu_time_raw >= 2 * 3
    assert a.core_hours == a.cpu_seconds / 3600
    assert a.elapsed_seconds == sacct[ada.scheduler_id].elapsed_seconds
    assert a.end == sacct[ada.scheduler_id].end and a.start == sacct[ada.scheduler_id].start
    assert a.req_mem_mb and a.max_rss_mb  # MaxRSS comes from the job's batch step
    b = records[bert.scheduler_id]
    assert (b.user, b.project, b.portal_job, b.state, b.exit_code) == (slurm.bob, slurm.beta, bert, "FAILED", 2)
    o = records[outside]
    assert (o.user, o.posix_user, o.project, o.account, o.portal_job, o.unmapped) == (
        slurm.bob, "bert", slurm.beta, "beta", None, False)
    s = records[stranger]  # the service user has no portal user: kept, flagged
    assert (s.user, s.posix_user, s.project, s.unmapped) == (None, os.environ["SLURM_TEST_SSH_USER"],
                                                             slurm.alpha, True)

    # The rollup has each of our jobs and equals the sums of the records.
    day = a.end.date()
    alice_alpha = {d.resource: d.amount for d in DailyUsage.objects.filter(
        cluster=slurm.cluster, day=day, user=slurm.alice, project=slurm.alpha)}
    mine = UsageRecord.objects.filter(cluster=slurm.cluster, user=slurm.alice, project=slurm.alpha,
                                      end__date=day)
    assert alice_alpha["jobs"] == mine.count() >= 1
    assert alice_alpha["core_hours"] == pytest.approx(sum(r.cpu_seconds for r in mine) / 3600)

    # Again, through the periodic task: nothing we have changes, the watermark
    # does not go back (the test bed is shared: others' new jobs may come in).
    mark = IngestWatermark.objects.get(cluster=slurm.cluster)
    ours = UsageRecord.objects.filter(cluster=slurm.cluster)
    before, count = values(ours), ours.count()
    tasks.ingest_all_clusters()
    mark2 = IngestWatermark.objects.get(cluster=slurm.cluster)
    assert mark2.last_end >= mark.last_end and mark2.last_run > mark.last_run
    assert values(ours.filter(pk__in=[r[0] for r in before])) == before
    assert ours.count() >= count

    # The very same sacct output ingested twice: identical rows, watermark unchanged.
    lines = slurm_client(slurm.cluster).accounting_window(mark.last_end.replace(hour=0, minute=0, second=0),
                                                          mark2.last_run)
    services.ingest_lines(slurm.cluster, lines)
    snap, mark3 = values(ours), IngestWatermark.objects.get(cluster=slurm.cluster)
    again = services.ingest_lines(slurm.cluster, lines)
    assert (again.inserted, again.updated, again.days) == (0, 0, [])
    assert values(ours) == snap
    assert IngestWatermark.objects.get(cluster=slurm.cluster).last_end == mark3.last_end
