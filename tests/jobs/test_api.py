"""Jobs REST API (/api/v1/jobs/, /api/v1/job-templates/) against the real
Slurm test bed: submission, validation (400 naming the field, never 500),
quota (409), filters, tenant isolation, cancel, clone, output, token auth.

Tests that need a job to reach the cluster run with transaction=True, so the
on_commit hand-off to the (eager) Celery task fires as in production; the
others stay in the fast rolled-back transaction, where nothing is submitted.
"""
import uuid

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from clusters.backends.base import BackendError
from clusters.models import ClusterAccount, PosixAccount
from clusters.services import slurm_client
from jobs.models import ON_CLUSTER, Job, JobTemplate, State
from projects import services as project_services
from projects.models import Quota
from tests.jobs.conftest import wait_for_state

JOBS = "/api/v1/jobs/"
TEMPLATES = "/api/v1/job-templates/"
HELD = "#!/bin/bash\n#SBATCH --hold\necho never\n"
real_cluster = pytest.mark.django_db(transaction=True)


@pytest.fixture
def bed(slurm):
    """The `slurm` cast; nothing of ours stays queued on the cluster afterwards."""
    yield slurm
    for job in Job.objects.filter(state__in=ON_CLUSTER, submitted_at__isnull=False):
        try:
            slurm_client(slurm.cluster).cancel(job.scheduler_id, as_user=job.posix_user)
        except BackendError:
            pass


def payload(**over):
    data = {"project": "alpha", "cluster": "testbed", "name": "hello", "script": "echo hi",
            "cpus": 1, "time_limit_minutes": 5, "partition": "debug"}
    data.update(over)
    return {k: v for k, v in data.items() if v is not None}


def make_job(c, owner, project, name="job", **fields):
    """A Job row made directly (visibility checks need no cluster)."""
    fields.setdefault("state", State.COMPLETED)
    fields.setdefault("time_limit_minutes", 10)
    return Job.objects.create(project=project, owner=owner, cluster=c.cluster, name=name, script="echo x",
                              partition="debug", **fields)


def core_hours(project):
    return Quota.objects.get(project=project, resource="core_hours")


def in_squeue(c, scheduler_id):
    """Slurm's state of a job still pending or running, else None (squeue
    keeps finished jobs listed for a while, with a final state)."""
    entries = slurm_client(c.cluster).queue([scheduler_id])
    states = {e.state for e in entries.values()} - {"CANCELLED", "COMPLETED", "FAILED", "TIMEOUT"}
    return states.pop() if states else None


# --- Submit, follow, output ----------------------------------------------------------


@real_cluster
def test_submit_runs_to_completion_and_serves_output(bed, api_for):
    token = uuid.uuid4().hex
    client = api_for(bed.alice)
    response = client.post(JOBS, payload(name="echo", script=f"echo {token}", cpus=2), format="json")
    assert response.status_code == 201, response.content
    data = response.json()
    assert data["state"] == "pending"
    assert data["scheduler_id"].isdigit()
    assert (data["project"], data["cluster"], data["owner"], data["partition"], data["cpus"]) == (
        "alpha", "testbed", "alice", "debug", 2)
    assert data["estimated_core_hours"] == 1
    assert core_hours(bed.alpha).reserved == 1

    job = wait_for_state(Job.objects.get(pk=data["id"]), [State.COMPLETED])
    detail = client.get(f"{JOBS}{job.pk}/").json()
    assert (detail["state"], detail["exit_code"], detail["scheduler_id"]) == ("completed", 0, data["scheduler_id"])
    assert detail["started_at"] and detail["ended_at"] and detail["submitted_at"]
    assert detail["ended_at"] >= detail["started_at"]
    assert core_hours(bed.alpha).reserved == 0  # the reservation was settled

    out = client.get(f"{JOBS}{job.pk}/output/", {"stream": "stdout"})
    assert out.status_code == 200
    assert out["Content-Type"].startswith("text/plain")
    assert out.content.decode() == f"{token}\n"
    assert client.get(f"{JOBS}{job.pk}/output/", {"stream": "stderr"}).content == b""
    tail = client.get(f"{JOBS}{job.pk}/output/", {"stream": "stdout", "max_bytes": 3})
    assert tail.content.decode() == f"{token[-2:]}\n"

    bad = client.get(f"{JOBS}{job.pk}/output/", {"stream": "bogus"})
    assert bad.status_code == 400
    assert "stream" in bad.json()
    bad = client.get(f"{JOBS}{job.pk}/output/", {"max_bytes": "lots"})
    assert bad.status_code == 400 and "max_bytes" in bad.json()


# --- Bad input: 400 naming the field, nothing created ---------------------------------


BAD_INPUT = {
    "missing name": ("alice", {"name": None}, "name"),
    "unknown project": ("alice", {"project": "nope"}, "project"),
    "outsider": ("mallory", {}, "project"),
    "other tenant": ("bob", {}, "project"),
    "unknown cluster": ("alice", {"cluster": "nope"}, "cluster"),
    "zero cpus": ("alice", {"cpus": 0}, "cpus"),
    "cpus not a number": ("alice", {"cpus": "x"}, "cpus"),
    "too many cpus for a node": ("alice", {"cpus": 3}, "cpus"),
    "over the partition time limit": ("alice", {"time_limit_minutes": 31}, "time_limit_minutes"),
    "unknown partition": ("alice", {"partition": "gpu"}, "partition"),
    "bad array": ("alice", {"array": "1-x"}, "array"),
    "bad variable name": ("alice", {"environment": {"1BAD": "x"}}, "environment"),
    "environment not a mapping": ("alice", {"environment": ["A=1"]}, "environment"),
    "empty script": ("alice", {"script": ""}, "script"),
    "blank script": ("alice", {"script": "  \n "}, "script"),
    "no POSIX account": ("amy", {}, "cluster"),
}


@pytest.mark.parametrize("who, change, field", BAD_INPUT.values(), ids=BAD_INPUT.keys())
def test_bad_input_is_400_naming_the_field(bed, api_for, who, change, field):
    response = api_for(getattr(bed, who)).post(JOBS, payload(**change), format="json")
    assert response.status_code == 400, response.content
    assert field in response.json(), response.json()
    assert not Job.objects.exists()
    assert core_hours(bed.alpha).reserved == 0


def test_longer_jobs_fit_the_long_partition(bed, api_for):
    """The same 31 minutes refused on debug are fine on `long` (nothing is
    submitted here: this test's transaction never commits)."""
    response = api_for(bed.alice).post(JOBS, payload(time_limit_minutes=31, partition="long"), format="json")
    assert response.status_code == 201, response.content
    assert (response.json()["partition"], response.json()["time_limit_minutes"]) == ("long", 31)


def test_minimal_request_uses_a_time_limit_the_partition_allows(bed, api_for):
    response = api_for(bed.alice).post(
        JOBS, {"project": "alpha", "cluster": "testbed", "name": "minimal", "script": "echo hi"}, format="json")
    assert response.status_code == 201, response.content
    # The default partition (debug) allows 30 minutes and sets no default: an hour capped at 30.
    assert response.json()["time_limit_minutes"] == 30
    assert response.json()["partition"] == "debug"


@pytest.fixture
def epochs_template(bed):
    return JobTemplate.objects.create(
        name="Train", script="echo {{ epochs }} {{ mode }}", time_limit_minutes=10,
        parameters=[{"name": "epochs", "label": "Epochs", "type": "int", "default": 10, "min": 1, "max": 100},
                    {"name": "mode", "type": "choice", "choices": ["fast", "slow"], "default": "fast"}],
    )


def test_template_parameter_out_of_range_is_400_naming_it(bed, api_for, epochs_template):
    response = api_for(bed.alice).post(
        JOBS, payload(script=None, template=epochs_template.pk, parameters={"epochs": 101}), format="json")
    assert response.status_code == 400, response.content
    errors = response.json()
    assert any("epochs" in key for key in errors), errors
    assert "at most 100" in str(errors)
    assert not Job.objects.exists()


def test_template_renders_quoted_parameters(bed, api_for, epochs_template):
    response = api_for(bed.alice).post(
        JOBS, payload(script=None, template=epochs_template.pk, parameters={"epochs": 7, "mode": "slow"}),
        format="json")
    assert response.status_code == 201, response.content
    job = Job.objects.get(pk=response.json()["id"])
    assert job.script == "#!/bin/bash\necho 7 slow"
    assert (job.template, job.template_parameters) == (epochs_template, {"epochs": 7, "mode": "slow"})
    bad_choice = api_for(bed.alice).post(
        JOBS, payload(script=None, template=epochs_template.pk, parameters={"mode": "; rm -rf /"}), format="json")
    assert bad_choice.status_code == 400 and any("mode" in key for key in bad_choice.json())


def test_another_users_template_is_400(bed, api_for):
    private = JobTemplate.objects.create(name="Bob's", owner=bed.bob, script="echo bob")
    response = api_for(bed.alice).post(JOBS, payload(script=None, template=private.pk), format="json")
    assert response.status_code == 400
    assert "template" in response.json()


# --- Quota ------------------------------------------------------------------------------


def test_over_quota_is_409_and_submits_nothing(bed, api_for):
    project_services.quota_set(project=bed.alpha, resource="core_hours", limit=10)
    project_services.quota_reserve(project=bed.alpha, user=bed.alice, resource="core_hours", amount=3)
    # 2 CPUs x 30 min x 20 array tasks = 20 core-hours
    response = api_for(bed.alice).post(JOBS, payload(cpus=2, time_limit_minutes=30, array="0-19"), format="json")
    assert response.status_code == 409, response.content
    quota = response.json()["quota"]
    assert {k: quota[k] for k in ("resource", "limit", "current", "requested", "scope")} == {
        "resource": "core_hours", "limit": 10, "current": 3, "requested": 20, "scope": "project"}
    assert "20" in quota["detail"] and "10" in quota["detail"]
    assert not Job.objects.exists()
    after = core_hours(bed.alpha)
    assert (after.used, after.reserved) == (0, 3)
    # 7 core-hours still fit exactly.
    fits = api_for(bed.alice).post(JOBS, payload(cpus=2, time_limit_minutes=30, array="0-6"), format="json")
    assert fits.status_code == 201
    assert core_hours(bed.alpha).reserved == 10


# --- Listing, filters, tenant isolation --------------------------------------------------


@pytest.fixture
def rows(bed):
    """alice: render (completed), train (pending); amy: amy-job (running) in
    alpha; bob: beta-job (failed) in beta. Rows only: nothing on the cluster."""
    bed.render = make_job(bed, bed.alice, bed.alpha, "render")
    bed.train = make_job(bed, bed.alice, bed.alpha, "train", state=State.PENDING, scheduler_id="991001")
    bed.amy_job = make_job(bed, bed.amy, bed.alpha, "amy-job", state=State.RUNNING, scheduler_id="991002")
    bed.beta_job = make_job(bed, bed.bob, bed.beta, "beta-job", state=State.FAILED, scheduler_id="991003")
    return bed


def names(response):
    assert response.status_code == 200, response.content
    return sorted(j["name"] for j in response.json()["results"])


def test_list_is_tenant_filtered(rows, api_for):
    assert names(api_for(rows.alice).get(JOBS)) == ["amy-job", "render", "train"]  # manager of alpha
    assert names(api_for(rows.amy).get(JOBS)) == ["amy-job"]  # a member sees only her own
    assert names(api_for(rows.bob).get(JOBS)) == ["beta-job"]
    assert names(api_for(rows.mallory).get(JOBS)) == []
    assert names(api_for(rows.staff).get(JOBS)) == ["amy-job", "beta-job", "render", "train"]
    # Search and filters never reach past the tenant filter.
    assert names(api_for(rows.bob).get(JOBS, {"search": "render"})) == []
    assert names(api_for(rows.bob).get(JOBS, {"project": "alpha"})) == []


def test_amy_loses_her_jobs_when_she_leaves_the_project(rows, api_for):
    from projects.models import Membership

    Membership.objects.filter(user=rows.amy).delete()
    assert names(api_for(rows.amy).get(JOBS)) == []
    assert api_for(rows.amy).get(f"{JOBS}{rows.amy_job.pk}/").status_code == 404


def test_list_filters_search_and_ordering(rows, api_for):
    staff = api_for(rows.staff)
    assert names(staff.get(JOBS, {"project": "alpha"})) == ["amy-job", "render", "train"]
    assert names(staff.get(JOBS, {"project": "beta"})) == ["beta-job"]
    assert names(staff.get(JOBS, {"state": "pending"})) == ["train"]
    assert names(staff.get(f"{JOBS}?state=pending&state=running")) == ["amy-job", "train"]
    assert names(staff.get(JOBS, {"cluster": "testbed"})) == ["amy-job", "beta-job", "render", "train"]
    assert names(staff.get(JOBS, {"cluster": "elsewhere"})) == []
    assert names(staff.get(JOBS, {"search": "REND"})) == ["render"]
    assert names(staff.get(JOBS, {"search": "991003"})) == ["beta-job"]
    ordered = staff.get(JOBS, {"ordering": "name"}).json()["results"]
    assert [j["name"] for j in ordered] == ["amy-job", "beta-job", "render", "train"]
    ordered = staff.get(JOBS, {"ordering": "-name"}).json()["results"]
    assert [j["name"] for j in ordered] == ["train", "render", "beta-job", "amy-job"]
    newest_first = staff.get(JOBS).json()["results"]
    assert [j["name"] for j in newest_first] == ["beta-job", "amy-job", "train", "render"]
    assert staff.get(JOBS, {"state": "bogus"}).status_code == 400


@pytest.mark.parametrize("who", ["bob", "mallory", "amy"])
def test_another_users_job_is_404_everywhere(rows, api_for, who):
    client = api_for(getattr(rows, who))
    job = rows.train
    assert client.get(f"{JOBS}{job.pk}/").status_code == 404
    assert client.get(f"{JOBS}{job.pk}/output/").status_code == 404
    assert client.post(f"{JOBS}{job.pk}/cancel/").status_code == 404
    assert client.post(f"{JOBS}{job.pk}/clone/").status_code == 404
    job.refresh_from_db()
    assert job.state == State.PENDING
    assert Job.objects.count() == 4


def test_manager_and_staff_read_a_members_job(rows, api_for):
    for user in (rows.alice, rows.staff):
        data = api_for(user).get(f"{JOBS}{rows.amy_job.pk}/").json()
        assert (data["owner"], data["state"], data["scheduler_id"]) == ("amy", "running", "991002")


def test_anonymous_gets_nothing(rows):
    client = APIClient()
    assert client.get(JOBS).status_code in (401, 403)
    assert client.get(f"{JOBS}{rows.render.pk}/").status_code in (401, 403)
    assert client.post(JOBS, payload(), format="json").status_code in (401, 403)
    assert Job.objects.count() == 4


def test_jobs_are_not_editable_over_the_api(rows, api_for):
    client = api_for(rows.alice)
    assert client.patch(f"{JOBS}{rows.render.pk}/", {"name": "x"}, format="json").status_code == 405
    assert client.delete(f"{JOBS}{rows.render.pk}/").status_code == 405
    assert Job.objects.get(pk=rows.render.pk).name == "render"


def test_cancelling_a_finished_job_is_409(rows, api_for):
    response = api_for(rows.alice).post(f"{JOBS}{rows.render.pk}/cancel/")
    assert response.status_code == 409
    assert "already completed" in response.json()["detail"]


def test_clone_is_checked_like_a_new_job(rows, api_for):
    project_services.quota_set(project=rows.alpha, resource="core_hours", limit=0)
    response = api_for(rows.alice).post(f"{JOBS}{rows.render.pk}/clone/")
    assert response.status_code == 409
    assert (response.json()["quota"]["resource"], response.json()["quota"]["requested"]) == ("core_hours", 1)
    response = api_for(rows.amy).post(f"{JOBS}{rows.amy_job.pk}/clone/")  # amy has no POSIX account
    assert response.status_code == 400 and "cluster" in response.json()
    assert Job.objects.count() == 4


# --- Cancel and clone on the real cluster -------------------------------------------------


@real_cluster
def test_cancel_and_clone_held_jobs(bed, api_for):
    # Token authentication: no session, no CSRF.
    token = Token.objects.create(user=bed.alice)
    alice = APIClient()
    alice.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    response = alice.post(JOBS, payload(name="held", script=HELD), format="json")
    assert response.status_code == 201, response.content
    held = response.json()
    assert (held["state"], held["owner"]) == ("pending", "alice")
    assert in_squeue(bed, held["scheduler_id"]) == "PENDING"

    # Another tenant cannot touch it.
    assert api_for(bed.bob).post(f"{JOBS}{held['id']}/cancel/").status_code == 404
    assert in_squeue(bed, held["scheduler_id"]) == "PENDING"

    clone = alice.post(f"{JOBS}{held['id']}/clone/")
    assert clone.status_code == 201, clone.content
    copy = clone.json()
    assert copy["id"] != held["id"] and copy["scheduler_id"] not in ("", held["scheduler_id"])
    assert copy["state"] == "pending"
    assert Job.objects.get(pk=copy["id"]).script == Job.objects.get(pk=held["id"]).script
    assert (copy["name"], copy["partition"], copy["time_limit_minutes"]) == ("held", "debug", 5)

    cancelled = alice.post(f"{JOBS}{held['id']}/cancel/")
    assert cancelled.status_code == 200, cancelled.content
    assert cancelled.json()["state"] == "cancelled"
    assert cancelled.json()["ended_at"]
    assert in_squeue(bed, held["scheduler_id"]) is None
    assert in_squeue(bed, copy["scheduler_id"]) == "PENDING"  # only the one asked for
    again = alice.post(f"{JOBS}{held['id']}/cancel/")
    assert again.status_code == 409
    assert "cancelled" in again.json()["detail"]

    # amy (a plain alpha member, as POSIX bert charged to account beta)
    # submits; she cannot see or cancel alice's job, alice as manager can
    # cancel hers.
    PosixAccount.objects.filter(user=bed.bob).delete()
    PosixAccount.objects.create(user=bed.amy, cluster=bed.cluster, username="bert")
    ClusterAccount.objects.create(cluster=bed.cluster, project=bed.alpha, account="beta")
    amy = api_for(bed.amy)
    mine = amy.post(JOBS, payload(name="amy-held", script=HELD), format="json")
    assert mine.status_code == 201, mine.content
    mine = mine.json()
    assert mine["state"] == "pending" and Job.objects.get(pk=mine["id"]).posix_user == "bert"
    assert amy.post(f"{JOBS}{copy['id']}/cancel/").status_code == 404
    assert in_squeue(bed, copy["scheduler_id"]) == "PENDING"
    by_manager = alice.post(f"{JOBS}{mine['id']}/cancel/")
    assert by_manager.status_code == 200, by_manager.content
    assert by_manager.json()["state"] == "cancelled"
    assert in_squeue(bed, mine["scheduler_id"]) is None
    assert core_hours(bed.alpha).reserved == 1  # only the clone still holds its reservation


# --- Templates, schema ----------------------------------------------------------------------


def test_templates_curated_and_own_only(bed, api_for):
    JobTemplate.objects.create(name="Curated", script="echo c")
    JobTemplate.objects.create(name="Alice's", owner=bed.alice, script="echo a")
    JobTemplate.objects.create(name="Bob's", owner=bed.bob, script="echo b")
    results = api_for(bed.alice).get(TEMPLATES).json()["results"]
    assert sorted((t["name"], t["curated"]) for t in results) == [("Alice's", False), ("Curated", True)]
    assert sorted(t["name"] for t in api_for(bed.bob).get(TEMPLATES).json()["results"]) == ["Bob's", "Curated"]
    assert [t["name"] for t in api_for(bed.mallory).get(TEMPLATES).json()["results"]] == ["Curated"]
    bobs = JobTemplate.objects.get(name="Bob's")
    assert api_for(bed.alice).get(f"{TEMPLATES}{bobs.pk}/").status_code == 404


def test_schema_lists_the_job_endpoints(cast, api_for):
    response = api_for(cast.alice).get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    paths = response.json()["paths"]
    for path in ("/api/v1/jobs/", "/api/v1/jobs/{id}/", "/api/v1/jobs/{id}/cancel/", "/api/v1/jobs/{id}/clone/",
                 "/api/v1/jobs/{id}/output/", "/api/v1/job-templates/", "/api/v1/job-templates/{id}/"):
        assert path in paths, path
    assert "post" in paths["/api/v1/jobs/"]
    assert "text/plain" in paths["/api/v1/jobs/{id}/output/"]["get"]["responses"]["200"]["content"]


def test_output_when_the_cluster_cannot_be_reached_is_503(rows, api_for):
    rows.cluster.command_nodes.update(enabled=False)
    client = api_for(rows.alice)
    response = client.get(f"{JOBS}{rows.train.pk}/output/")
    assert response.status_code == 503, response.content
    assert "no enabled command node" in response.json()["detail"]
    assert client.get(f"{JOBS}{rows.train.pk}/output/", {"stream": "bogus"}).status_code == 400
