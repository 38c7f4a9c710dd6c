"""What a job POST costs, so it does not creep back up: the number of SQL
statements, and the lookups that fetch the role, the POSIX name and the
Slurm account with the project and the cluster (tenant rules unchanged).
No cluster is reached: the rows are made by hand and nothing commits."""
import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from clusters.models import ClusterAccount, Partition, PosixAccount, SlurmCluster
from jobs import selectors
from jobs.models import Job
from projects import services as project_services
from projects.models import MemberUsage, Quota
from projects.selectors import projects_visible_to

JOBS = "/api/v1/jobs/"


@pytest.fixture
def bed(cast):
    cluster = SlurmCluster.objects.create(name="lab", ssh_user="nephele", ssh_private_key="not used",
                                          known_hosts="not used", work_prefix="/work")
    Partition.objects.create(cluster=cluster, name="debug", is_default=True, max_time_minutes=30, total_nodes=2,
                             total_cpus=4)
    PosixAccount.objects.create(user=cast.alice, cluster=cluster, username="ada")
    PosixAccount.objects.create(user=cast.bob, cluster=cluster, username="bert")
    ClusterAccount.objects.create(cluster=cluster, project=cast.beta, account="beta-acct")
    for project in (cast.alpha, cast.beta):
        project_services.quota_set(project=project, resource="core_hours", limit=1000)
    cast.cluster = cluster
    return cast


def token_client(user):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


BODY = {"project": "alpha", "cluster": "lab", "name": "cheap", "script": "true", "cpus": 1, "time_limit_minutes": 5}


def test_a_job_post_takes_at_most_nine_statements(bed, celery_eager, django_assert_max_num_queries):
    client = token_client(bed.alice)
    assert client.post(JOBS, BODY, format="json").status_code == 201  # her first claim makes her usage row
    # token + user; project + role; cluster + POSIX name + account +
    # partitions; savepoint; the new id; insert (output paths included);
    # quota; member usage; release. (The batch anchor's SELECT ... FOR
    # UPDATE, one more, runs when this process sent a message for the
    # cluster in the last seconds: not here, where nothing commits.) With
    # workers, as here, the answer is the job as created; only in eager mode
    # is its state read again (the submission ran inside the request).
    celery_eager.conf.task_always_eager = False
    with django_assert_max_num_queries(9):
        response = client.post(JOBS, BODY, format="json")
    assert response.json()["state"] == "queued"
    assert response.status_code == 201, response.content
    job = Job.objects.get(pk=response.json()["id"])
    assert (job.posix_user, job.account, job.partition, job.workdir) == ("ada", "alpha", "debug", "/work/ada")
    assert response.json()["output_path"] == f"/work/ada/{job.slurm_name}.out"
    quota = Quota.objects.get(project=bed.alpha, resource="core_hours")
    assert quota.reserved == 2
    assert MemberUsage.objects.get(quota=quota, user=bed.alice).reserved == 2


def test_a_mapped_slurm_account_is_used(bed):
    response = token_client(bed.bob).post(JOBS, {**BODY, "project": "beta"}, format="json")
    assert response.status_code == 201, response.content
    assert Job.objects.get(pk=response.json()["id"]).account == "beta-acct"


@pytest.mark.parametrize("who", ["alice", "amy", "bob", "mallory", "staff"])
def test_project_lookup_follows_the_tenant_rule(bed, who):
    user = getattr(bed, who)
    for project in (bed.alpha, bed.beta):
        found = selectors.project_for_submission(user, project.slug)
        visible = projects_visible_to(user).filter(pk=project.pk).exists()
        assert (found is not None) == visible, (who, project.slug)
        if found is not None:
            role = project.memberships.filter(user=user).values_list("role", flat=True).first()
            assert found.roles_known == {user.pk: role}
    assert selectors.project_for_submission(user, "nope") is None


def test_cluster_lookup_knows_the_posix_name_and_account(bed):
    cluster = selectors.cluster_for_submission(bed.bob, "lab", project_slug="beta")
    assert (cluster.pk, cluster.posix_names_known, cluster.accounts_known) == (
        bed.cluster.pk, {bed.bob.pk: "bert"}, {"beta": "beta-acct"})
    assert {"ssh_private_key", "known_hosts"} <= cluster.get_deferred_fields()  # not read, not decrypted
    amy = selectors.cluster_for_submission(bed.amy, "lab", project_slug="alpha")
    assert (amy.posix_names_known, amy.accounts_known) == ({bed.amy.pk: None}, {"alpha": None})
    assert selectors.cluster_for_submission(bed.alice, "nope") is None


def test_a_user_without_a_posix_name_is_told_so(bed):
    response = token_client(bed.amy).post(JOBS, BODY, format="json")
    assert response.status_code == 400
    assert "no user name on lab" in response.json()["cluster"][0]


@pytest.mark.parametrize("change, field, message", [
    ({"time_limit_minutes": 31}, "time_limit_minutes", "debug allows at most 30 minutes"),
    ({"partition": "gpu"}, "partition", "no partition 'gpu'"),
    ({"cpus": 3}, "cpus", "at most 2 CPUs per node"),
])
def test_partition_limits_read_with_the_cluster_still_hold(bed, change, field, message):
    # The partitions come with the cluster's lookup (one JSON column): the
    # same limits as when they are read on their own.
    cluster = selectors.cluster_for_submission(bed.alice, "lab", project_slug="alpha")
    assert [(p.name, p.is_default, p.max_time_minutes, p.total_cpus) for p in cluster.partitions_known] == [
        ("debug", True, 30, 4)]
    response = token_client(bed.alice).post(JOBS, {**BODY, **change}, format="json")
    assert response.status_code == 400, response.content
    assert message in " ".join(response.json()[field])
    assert not Job.objects.exists()


def test_a_partition_added_since_is_seen_by_the_next_post(bed):
    client = token_client(bed.alice)
    assert client.post(JOBS, {**BODY, "partition": "long"}, format="json").status_code == 400
    Partition.objects.create(cluster=bed.cluster, name="long", max_time_minutes=600, total_nodes=1, total_cpus=8)
    response = client.post(JOBS, {**BODY, "partition": "long", "time_limit_minutes": 300, "cpus": 8}, format="json")
    assert response.status_code == 201, response.content
    assert Job.objects.get().partition == "long"


def test_an_inactive_users_token_is_refused(bed):
    client = token_client(bed.alice)
    bed.alice.is_active = False
    bed.alice.save()
    response = client.post(JOBS, BODY, format="json")
    assert response.status_code in (401, 403)  # 403: session authentication comes first
    assert response.json()["detail"] == "User inactive or deleted."
    assert not Job.objects.exists()
