"""Accounting tests: the jobs tests' real test-bed cluster (`slurm`), and a
cluster row without SSH for tests that feed sacct lines directly."""
import pytest

from clusters.models import ClusterAccount, PosixAccount, SlurmCluster
from tests.jobs.conftest import slurm, wait_for_state  # noqa: F401  (fixtures shared with the jobs tests)

SEP = "\x1f"
T0 = 1_790_000_000  # 2026-09-21T13:33:20Z


def line(job_id, *, name="work", user="ada", account="alpha", partition="debug", state="COMPLETED", exit="0:0",
         cpus=1, tres=None, elapsed=60, cputime=None, reqmem="1000M", submit=None, start=None, end=None, rss="",
         sep=SEP):
    """One sacct line in accounting.ingest.FIELDS order (times as epochs)."""
    end = T0 + 3600 if end is None else end
    numeric = isinstance(end, int) and isinstance(elapsed, int) and isinstance(cpus, int)
    start = (end - elapsed if numeric else "Unknown") if start is None else start
    submit = (start - 10 if isinstance(start, int) else end if isinstance(end, int) else "") if submit is None \
        else submit
    tres = f"billing={cpus},cpu={cpus},node=1" if tres is None else tres
    cputime = (cpus * elapsed if numeric else 0) if cputime is None else cputime
    return sep.join(str(v) for v in (job_id, name, user, account, partition, state, exit, cpus, tres, elapsed,
                                     cputime, reqmem, submit, start, end, rss))


def step(job_id, rss, *, end=None, sep=SEP):
    end = T0 + 3600 if end is None else end
    return sep.join(str(v) for v in (job_id, "batch", "", "alpha", "", "COMPLETED", "0:0", 1, "cpu=1,mem=0,node=1",
                                     60, 60, "", end - 70, end - 60, end, rss))


@pytest.fixture
def offline(cast):
    """cast + a cluster that is never contacted: alice -> ada, bob -> bert,
    Beta through the Slurm account 'beta-acct', Alpha by its slug."""
    cluster = SlurmCluster.objects.create(name="offline", ssh_user="nephele", ssh_private_key="-", known_hosts="-")
    PosixAccount.objects.create(user=cast.alice, cluster=cluster, username="ada")
    PosixAccount.objects.create(user=cast.bob, cluster=cluster, username="bert")
    ClusterAccount.objects.create(cluster=cluster, project=cast.beta, account="beta-acct")
    cast.cluster = cluster
    return cast
