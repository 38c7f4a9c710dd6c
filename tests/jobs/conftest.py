"""The test bed's real Slurm cluster as a portal SlurmCluster, with the cast
mapped to its POSIX users: alice -> ada (Slurm accounts alpha and beta),
bob -> bert (beta). amy has no POSIX name (names are unique per cluster).

Jobs submitted here really run on the cluster; celery is eager, so
job_create submits inline."""
import time
from pathlib import Path

import pytest

from clusters.models import ClusterAccount, CommandNode, PosixAccount, SlurmCluster
from clusters.services import partitions_sync
from projects import services as project_services
from tests.testbed import require_env

NEEDED = ["SLURM_TEST_HOST", "SLURM_TEST_PORTS", "SLURM_TEST_SSH_USER", "SLURM_TEST_SSH_KEY",
          "SLURM_TEST_KNOWN_HOSTS", "SLURM_TEST_SLURM_CONF", "SLURM_TEST_WORK_PREFIX"]


def bed_env():
    return require_env("Slurm", NEEDED)


@pytest.fixture
def slurm(cast):
    """cast + a SlurmCluster for the test bed (sudo mode, both command nodes)."""
    env = bed_env()
    cluster = SlurmCluster.objects.create(
        name="testbed", ssh_user=env["SLURM_TEST_SSH_USER"],
        ssh_private_key=Path(env["SLURM_TEST_SSH_KEY"]).read_text(),
        known_hosts=Path(env["SLURM_TEST_KNOWN_HOSTS"]).read_text(),
        sudo_mode=SlurmCluster.SudoMode.SUDO, work_prefix=env["SLURM_TEST_WORK_PREFIX"],
        slurm_conf=env["SLURM_TEST_SLURM_CONF"],
    )
    for position, port in enumerate(env["SLURM_TEST_PORTS"].split(",")):
        CommandNode.objects.create(cluster=cluster, host=env["SLURM_TEST_HOST"], port=int(port), position=position)
    PosixAccount.objects.create(user=cast.alice, cluster=cluster, username="ada")
    PosixAccount.objects.create(user=cast.bob, cluster=cluster, username="bert")
    ClusterAccount.objects.create(cluster=cluster, project=cast.beta, account="beta")
    for project in (cast.alpha, cast.beta):
        project_services.quota_set(project=project, resource="core_hours", limit=1000)
    partitions_sync(cluster=cluster)
    cast.cluster = cluster
    return cast


def wait_for_state(job, states, *, timeout=90):
    """Run the cluster sync (as beat would) until `job` reaches one of `states`."""
    from jobs.services import jobs_sync

    deadline = time.monotonic() + timeout
    while True:
        jobs_sync(cluster=job.cluster)
        job.refresh_from_db()
        if job.state in states:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job.pk} stayed {job.state} ({job.scheduler_state}, {job.reason!r})")
        time.sleep(1)
