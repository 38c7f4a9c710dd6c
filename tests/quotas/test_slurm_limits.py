"""Project limits pushed to the real Slurm: the account, its users and
GrpTRESMins appear in `sacctmgr show assoc`, and Slurm itself holds a job
that would go past the limit. Uses a throwaway account per test run, so the
shared test accounts keep no limits."""
import os
import subprocess
import uuid

import pytest
from django.test import TestCase
from django.urls import reverse

from clusters.backends import ssh
from clusters.limits import slurm_limits_diff, slurm_limits_sync
from clusters.models import ClusterAccount
from jobs import services as job_services
from jobs.models import State
from projects import services

from ..jobs.conftest import slurm, wait_for_state  # noqa: F401  (fixture)


def sacctmgr_assoc(account):
    out = subprocess.run(
        ["sacctmgr", "-n", "-P", "show", "assoc", "where", f"account={account}", "format=Account,User,GrpTRESMins"],
        env={**os.environ, "SLURM_CONF": os.environ["SLURM_TEST_SLURM_CONF"]},
        capture_output=True, text=True, check=True).stdout
    return {tuple(line.split("|")[1:3]) for line in out.splitlines()}


@pytest.fixture
def gamma(slurm):  # noqa: F811
    account = f"gamma{uuid.uuid4().hex[:8]}"
    project = services.project_create(slug="gamma", name="Gamma", manager=slurm.alice, limits={"core_hours": 5})
    ClusterAccount.objects.create(cluster=slurm.cluster, project=project, account=account)
    slurm.gamma, slurm.gamma_account = project, account
    ssh.close_all()
    yield slurm
    from clusters.services import slurm_client

    for job in project.jobs.filter(state__in=[State.PENDING, State.RUNNING]):
        job_services.job_cancel(job=job, actor=slurm.alice)
    slurm_client(slurm.cluster).delete_account(account)
    ssh.close_all()


def test_sync_creates_the_account_users_and_limit(gamma):
    diffs = slurm_limits_diff(cluster=gamma.cluster, projects=[gamma.gamma])
    assert [(d.what, d.cluster) for d in diffs] == [("account", "missing")]

    slurm_limits_sync(cluster=gamma.cluster, projects=[gamma.gamma])

    assert sacctmgr_assoc(gamma.gamma_account) == {("", "cpu=300"), ("ada", "")}  # 5 core-hours; alice is ada
    assert slurm_limits_diff(cluster=gamma.cluster, projects=[gamma.gamma]) == []
    # A new limit is pushed again, idempotently.
    services.quota_set(project=gamma.gamma, resource="core_hours", limit=7)
    fixed = slurm_limits_sync(cluster=gamma.cluster, projects=[gamma.gamma])
    assert [(d.what, d.portal, d.cluster) for d in fixed] == [("GrpTRESMins", "cpu=420", "cpu=300")]
    assert ("", "cpu=420") in sacctmgr_assoc(gamma.gamma_account)
    assert slurm_limits_sync(cluster=gamma.cluster, projects=[gamma.gamma]) == []


def test_the_cluster_itself_holds_work_over_the_limit(gamma):
    services.quota_set(project=gamma.gamma, resource="core_hours", limit=1)  # 60 cpu-minutes
    slurm_limits_sync(cluster=gamma.cluster, projects=[gamma.gamma])
    # Past the portal's own check (it would refuse 2 core-hours), straight at
    # Slurm with a limit of 1 CPU-minute: Slurm keeps the job waiting.
    from clusters.services import slurm_client

    slurm_client(gamma.cluster).set_cpu_minutes_limit(gamma.gamma_account, 1)
    with TestCase.captureOnCommitCallbacks(execute=True):
        job = job_services.job_create(owner=gamma.alice, project=gamma.gamma, cluster=gamma.cluster, name="big",
                                      script="#!/bin/bash\nsleep 5\n", cpus=2, time_limit_minutes=30)
    job.refresh_from_db()
    assert job.scheduler_id

    for _ in range(20):
        job_services.jobs_sync(cluster=gamma.cluster)
        job.refresh_from_db()
        if "AssocGrp" in job.reason:
            break
        __import__("time").sleep(1)
    assert job.state == State.PENDING
    assert "AssocGrpCPUMinutesLimit" in job.reason


def test_staff_page_lists_differences_and_syncs(gamma, client_for):
    # The page syncs every active project: keep the shared test accounts out.
    for project in (gamma.alpha, gamma.beta):
        services.project_update(project=project, status="archived")
    staff = client_for(gamma.staff)
    page = staff.get(reverse("clusters:limits")).content.decode()
    assert gamma.gamma_account in page and "missing" in page

    staff.post(reverse("clusters:limits-sync", args=[gamma.cluster.pk]))

    assert ("", "cpu=300") in sacctmgr_assoc(gamma.gamma_account)
    assert client_for(gamma.alice).get(reverse("clusters:limits")).status_code in (302, 403)
