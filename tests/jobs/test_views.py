"""Job pages (/jobs/...): list with filters, search, sort, pagination and htmx
polling; the composer with templates, errors and the live estimate; the
detail page with its status and output fragments; the cancel, resubmit and
save-as-template buttons; tenant isolation and escaping.

Tests that need a job to reach the real Slurm test bed run with
transaction=True (the hand-off to the eager Celery task waits for the
commit); the others stay in the fast rolled-back transaction.
"""
import uuid
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from clusters.backends.base import BackendError
from clusters.services import slurm_client
from jobs.models import ON_CLUSTER, Job, JobTemplate, State
from projects import services as project_services
from projects.models import Quota
from tests.jobs.conftest import wait_for_state

real_cluster = pytest.mark.django_db(transaction=True)
POLL_TABLE = 'hx-trigger="every 5s"'
POLL_STATUS = 'hx-trigger="every 3s"'


@pytest.fixture
def bed(slurm):
    """The `slurm` cast; nothing of ours stays queued on the cluster afterwards."""
    yield slurm
    for job in Job.objects.filter(state__in=ON_CLUSTER, submitted_at__isnull=False):
        try:
            slurm_client(slurm.cluster).cancel(job.scheduler_id, as_user=job.posix_user)
        except BackendError:
            pass


def make_job(c, owner, project, name="job", **fields):
    fields.setdefault("state", State.COMPLETED)
    fields.setdefault("time_limit_minutes", 10)
    return Job.objects.create(project=project, owner=owner, cluster=c.cluster, name=name, script="echo x",
                              partition="debug", **fields)


def form_data(**over):
    data = {"project": "alpha", "cluster": "testbed", "name": "hello", "script": "echo hi", "partition": "debug",
            "nodes": "1", "cpus": "1", "time_limit_minutes": "5", "gpus": "0", "array": "", "memory_mb": "",
            "submit": "1"}
    data.update(over)
    return data


def messages_of(response):
    return [str(m) for m in response.context["messages"]]


def listed(response):
    assert response.status_code == 200
    return [job.name for job in response.context["page"]]


def job_urls(job):
    return {name: reverse(f"jobs:{name}", args=[job.pk])
            for name in ("detail", "status", "output", "cancel", "clone", "save-template")}


POST_ONLY = {"cancel", "clone", "save-template"}


# --- List -------------------------------------------------------------------------------


@pytest.fixture
def rows(bed):
    """Rows only (nothing on the cluster), oldest first: render (alice,
    completed), train (alice, pending), amy-job (amy, running) in alpha;
    beta-job (bob, failed) in beta."""
    bed.render = make_job(bed, bed.alice, bed.alpha, "render")
    bed.train = make_job(bed, bed.alice, bed.alpha, "train", state=State.PENDING, scheduler_id="991001")
    bed.amy_job = make_job(bed, bed.amy, bed.alpha, "amy-job", state=State.RUNNING, scheduler_id="991002")
    bed.beta_job = make_job(bed, bed.bob, bed.beta, "beta-job", state=State.FAILED, scheduler_id="991003")
    now = timezone.now()
    for age, job in enumerate([bed.beta_job, bed.amy_job, bed.train, bed.render]):
        Job.objects.filter(pk=job.pk).update(created=now - timedelta(minutes=age))
    return bed


def test_list_filters_search_and_sort(rows, client_for):
    alice = client_for(rows.alice)
    url = reverse("jobs:list")
    assert listed(alice.get(url)) == ["amy-job", "train", "render"]  # newest first; a manager sees amy's
    assert listed(alice.get(url, {"state": "pending"})) == ["train"]
    assert listed(alice.get(url, {"state": "bogus"})) == ["amy-job", "train", "render"]
    assert listed(alice.get(url, {"project": "alpha", "cluster": "testbed"})) == ["amy-job", "train", "render"]
    assert listed(alice.get(url, {"cluster": "elsewhere"})) == []
    assert listed(alice.get(url, {"q": "REND"})) == ["render"]
    assert listed(alice.get(url, {"q": str(rows.train.pk)})) == ["train"]
    assert listed(alice.get(url, {"q": "991002"})) == ["amy-job"]
    assert listed(alice.get(url, {"sort": "name"})) == ["amy-job", "render", "train"]
    assert listed(alice.get(url, {"sort": "-name"})) == ["train", "render", "amy-job"]
    assert listed(alice.get(url, {"sort": "owner__password"})) == ["amy-job", "train", "render"]
    html = alice.get(url, {"sort": "name"}).content.decode()
    assert 'aria-sort="ascending"' in html and "?sort=-name" in html

    assert listed(client_for(rows.amy).get(url)) == ["amy-job"]
    assert listed(client_for(rows.bob).get(url)) == ["beta-job"]
    assert listed(client_for(rows.bob).get(url, {"q": "render"})) == []
    assert listed(client_for(rows.bob).get(url, {"project": "alpha"})) == []
    assert listed(client_for(rows.mallory).get(url)) == []
    assert listed(client_for(rows.staff).get(url)) == ["beta-job", "amy-job", "train", "render"]
    # The project filter offers only the user's projects.
    html = client_for(rows.bob).get(url).content.decode()
    assert 'value="beta"' in html and 'value="alpha"' not in html


def test_list_paginates_and_polls_only_when_a_job_on_the_page_is_active(bed, client_for):
    Job.objects.bulk_create(
        Job(project=bed.alpha, owner=bed.alice, cluster=bed.cluster, name=f"done-{i:02d}", script="echo",
            state=State.COMPLETED) for i in range(26)
    )
    url = reverse("jobs:list")
    alice = client_for(bed.alice)
    first = alice.get(url)
    assert len(listed(first)) == 25
    html = first.content.decode()
    assert "Page 1 of 2" in html and "page=2" in html and "26 results" in html
    assert POLL_TABLE not in html

    # One pending job, older than the others: it is on page 2 only.
    active = make_job(bed, bed.alice, bed.alpha, "waiting", state=State.PENDING, scheduler_id="991009")
    Job.objects.filter(pk=active.pk).update(created=timezone.now() - timedelta(days=1))
    assert POLL_TABLE not in alice.get(url).content.decode()
    second = alice.get(url, {"page": "2", "state": ""})
    assert listed(second)[-1] == "waiting" and len(listed(second)) == 2
    html = second.content.decode()
    assert POLL_TABLE in html
    assert 'hx-get="/jobs/?page=2&amp;state="' in html  # the poll keeps page and filters
    assert POLL_TABLE in alice.get(url, {"state": "pending"}).content.decode()


def test_htmx_request_gets_only_the_table(rows, client_for):
    alice = client_for(rows.alice)
    url = reverse("jobs:list")
    partial = alice.get(url, {"q": "train"}, HTTP_HX_REQUEST="true")
    assert partial.status_code == 200
    html = partial.content.decode()
    assert "<html" not in html and 'role="search"' not in html and "<table" in html
    assert "train" in html and "render" not in html
    assert POLL_TABLE in html  # train is pending
    assert "HX-Request" in partial["Vary"]
    full = alice.get(url, HTTP_HX_REQUEST="true", HTTP_HX_HISTORY_RESTORE_REQUEST="true").content.decode()
    assert "<html" in full and 'role="search"' in full


# --- Composer -------------------------------------------------------------------------------


@pytest.fixture
def template(bed):
    return JobTemplate.objects.create(
        name="Train", description="Trains a model.", script="#SBATCH --hold\necho {{ epochs }} {{ mode }}",
        time_limit_minutes=10, cpus=2, partition="debug",
        parameters=[{"name": "epochs", "label": "Epochs", "type": "int", "default": 10, "min": 1, "max": 100},
                    {"name": "mode", "label": "Mode", "type": "choice", "choices": ["fast", "slow"],
                     "default": "fast"}],
    )


def test_compose_with_a_template_shows_its_parameters(bed, client_for, template):
    alice = client_for(bed.alice)
    response = alice.get(reverse("jobs:compose"), {"template": template.pk, "project": "alpha"})
    assert response.status_code == 200
    assert response.context["template"] == template
    html = response.content.decode()
    assert "Trains a model." in html
    assert 'name="param_epochs"' in html and 'value="10"' in html and 'max="100"' in html
    assert '<option value="fast" selected>' in html
    assert '<option value="alpha" selected>' in html
    assert 'type="hidden" name="script"' in html
    assert 'name="time_limit_minutes" value="10"' in html and 'name="cpus" value="2"' in html

    # Another user's template is not offered, nor loaded by id.
    private = JobTemplate.objects.create(name="Secret", owner=bed.bob, script="echo secret")
    response = alice.get(reverse("jobs:compose"), {"template": private.pk})
    assert response.context["template"] is None
    assert "Secret" not in response.content.decode()
    plain = alice.get(reverse("jobs:compose")).content.decode()
    assert 'name="param_epochs"' not in plain and '<textarea name="script"' in plain


INVALID = {
    "over the partition limit": ("alice", {"time_limit_minutes": "31"}, "time_limit_minutes",
                                 "debug allows at most 30 minutes"),
    "unknown partition": ("alice", {"partition": "gpu"}, "partition", "no partition 'gpu'"),
    "no POSIX account": ("amy", {}, "cluster", "no user name on testbed"),
    "another tenant's project": ("bob", {}, "project", "Select a valid choice"),
    "bad array": ("alice", {"array": "0-x"}, "array", "An array spec"),
    "empty script": ("alice", {"script": "  "}, "script", "The job script is empty"),
    "zero cpus": ("alice", {"cpus": "0"}, "cpus", "greater than or equal to 1"),
}


@pytest.mark.parametrize("who, change, field, message", INVALID.values(), ids=INVALID.keys())
def test_compose_shows_errors_without_creating_a_job(bed, client_for, who, change, field, message):
    response = client_for(getattr(bed, who)).post(reverse("jobs:compose"), form_data(**change))
    assert response.status_code == 200
    errors = response.context["form"].errors
    assert any(message in e for e in errors.get(field, [])), errors
    assert message.replace("'", "&#x27;") in response.content.decode()
    assert not Job.objects.exists()


def test_compose_over_quota_shows_the_quota_message(bed, client_for):
    project_services.quota_set(project=bed.alpha, resource="core_hours", limit=3)
    # 2 CPUs x 30 min x 4 array tasks = 4 core-hours
    response = client_for(bed.alice).post(
        reverse("jobs:compose"), form_data(cpus="2", time_limit_minutes="30", array="0-3"))
    assert response.status_code == 200
    errors = response.context["form"].non_field_errors()
    assert any("asking for 4" in e and "limit of 3" in e for e in errors), errors
    assert "asking for 4" in response.content.decode()
    assert not Job.objects.exists()
    assert Quota.objects.get(project=bed.alpha, resource="core_hours").reserved == 0


def test_compose_template_parameter_out_of_range(bed, client_for, template):
    response = client_for(bed.alice).post(
        reverse("jobs:compose"), form_data(template=str(template.pk), param_epochs="101", param_mode="fast"))
    assert response.status_code == 200
    assert "param_epochs" in response.context["form"].errors
    assert not Job.objects.exists()


def test_compose_without_submit_only_redisplays(bed, client_for):
    data = form_data()
    del data["submit"]
    response = client_for(bed.alice).post(reverse("jobs:compose"), data)
    assert response.status_code == 200
    assert not Job.objects.exists()


def test_estimate(bed, client_for):
    alice = client_for(bed.alice)
    url = reverse("jobs:estimate")
    data = form_data(nodes="1", cpus="2", time_limit_minutes="90", array="0-3", partition="long")
    html = alice.post(url, data).content.decode()
    assert "12 core-hours" in html and "4 array tasks" in html
    assert "1000 of 1000 core-hours left" in html and "does not fit" not in html

    project_services.quota_set(project=bed.alpha, resource="core_hours", limit=10)
    html = alice.post(url, data).content.decode()
    assert "10 of 10 core-hours left" in html and "does not fit" in html and "text-danger" in html

    single = alice.post(url, form_data(cpus="1", time_limit_minutes="61")).content.decode()
    assert "2 core-hours" in single and "array tasks" not in single
    missing = alice.post(url, form_data(cpus="")).content.decode()
    assert "Fill in nodes, CPUs and time limit" in missing
    # Another tenant's project: no quota figures leak.
    other = client_for(bed.mallory).post(url, data).content.decode()
    assert "12 core-hours" in other and "core-hours left" not in other
    assert alice.get(url).status_code == 405
    assert not Job.objects.exists()


def test_user_typed_name_is_escaped(bed, client_for):
    evil = "<script>alert(1)</script>"
    alice = client_for(bed.alice)
    response = alice.post(reverse("jobs:compose"), form_data(name=evil), follow=True)
    job = Job.objects.get()
    assert response.redirect_chain[-1][0] == job.get_absolute_url()
    assert job.name == evil
    for page in (response, alice.get(reverse("jobs:list")), alice.get(reverse("jobs:status", args=[job.pk]))):
        html = page.content.decode()
        assert "<script>alert(1)" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in response.content.decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in alice.get(reverse("jobs:list")).content.decode()


# --- Detail, status, buttons (real cluster) -----------------------------------------------------


@real_cluster
def test_compose_submit_detail_and_buttons(bed, client_for, template):
    alice = client_for(bed.alice)
    response = alice.post(reverse("jobs:compose"), form_data(
        template=str(template.pk), name="trained", param_epochs="5", param_mode="slow", cpus="2"))
    job = Job.objects.get()
    assert response.status_code == 302 and response["Location"] == job.get_absolute_url()
    assert (job.state, job.template, job.cpus) == (State.PENDING, template, 2)
    assert job.scheduler_id.isdigit()
    assert job.script == "#!/bin/bash\n#SBATCH --hold\necho 5 slow"

    detail = alice.get(response["Location"])
    html = detail.content.decode()
    assert any("trained" in m and "queued" in m for m in messages_of(detail))
    assert 'data-state="pending"' in html and f"<code>{job.scheduler_id}</code>" in html
    assert "echo 5 slow" in html and "#SBATCH --hold" in html
    assert POLL_STATUS in html
    status = alice.get(reverse("jobs:status", args=[job.pk])).content.decode()
    assert POLL_STATUS in status and reverse("jobs:cancel", args=[job.pk]) in status
    assert "<html" not in status

    for name in POST_ONLY:
        assert alice.get(job_urls(job)[name]).status_code == 405
    assert Job.objects.count() == 1 and not JobTemplate.objects.filter(owner=bed.alice).exists()

    saved = alice.post(reverse("jobs:save-template", args=[job.pk]), {"name": "My training"}, follow=True)
    assert any("My training" in m for m in messages_of(saved))
    mine = JobTemplate.objects.get(owner=bed.alice)
    assert (mine.name, mine.script, mine.cpus, mine.partition) == ("My training", job.script, 2, "debug")

    cloned = alice.post(reverse("jobs:clone", args=[job.pk]), follow=True)
    clone = Job.objects.exclude(pk=job.pk).get()
    assert cloned.redirect_chain[-1][0] == clone.get_absolute_url()
    assert f"Resubmitted as job #{clone.pk}." in messages_of(cloned)
    assert (clone.script, clone.state) == (job.script, State.PENDING)
    assert clone.scheduler_id not in ("", job.scheduler_id)

    cancelled = alice.post(reverse("jobs:cancel", args=[job.pk]), follow=True)
    assert cancelled.redirect_chain[-1][0] == job.get_absolute_url()
    assert any("cancelled" in m for m in messages_of(cancelled))
    job.refresh_from_db()
    assert job.state == State.CANCELLED
    status = alice.get(reverse("jobs:status", args=[job.pk])).content.decode()
    assert 'data-state="cancelled"' in status
    assert "hx-trigger" not in status and reverse("jobs:cancel", args=[job.pk]) not in status
    again = alice.post(reverse("jobs:cancel", args=[job.pk]), follow=True)
    assert any("already cancelled" in m for m in messages_of(again))
    assert Job.objects.get(pk=clone.pk).state == State.PENDING


@real_cluster
def test_finished_job_status_and_output(bed, client_for):
    token = uuid.uuid4().hex
    alice = client_for(bed.alice)
    alice.post(reverse("jobs:compose"), form_data(name="echo", script=f"echo '<b>{token}</b>'"))
    job = wait_for_state(Job.objects.get(), [State.COMPLETED])

    status = alice.get(reverse("jobs:status", args=[job.pk])).content.decode()
    assert 'data-state="completed"' in status and "hx-trigger" not in status
    assert "Cancel job" not in status
    assert POLL_STATUS not in alice.get(job.get_absolute_url()).content.decode()

    output = alice.get(reverse("jobs:output", args=[job.pk]))
    html = output.content.decode()
    assert f"&lt;b&gt;{token}&lt;/b&gt;" in html and f"<b>{token}" not in html
    assert "hx-trigger" not in html  # no refreshing once final
    assert "?stream=stdout&amp;download=1" in html
    empty = alice.get(reverse("jobs:output", args=[job.pk]), {"stream": "stderr"}).content.decode()
    assert "Nothing written yet." in empty
    bogus = alice.get(reverse("jobs:output", args=[job.pk]), {"stream": "../etc/passwd"}).content.decode()
    assert token in bogus  # unknown streams fall back to stdout

    download = alice.get(reverse("jobs:output", args=[job.pk]), {"stream": "stdout", "download": "1"})
    assert download.status_code == 200
    assert download["Content-Type"].startswith("text/plain")
    assert download["Content-Disposition"] == f'attachment; filename="{job.slurm_name}.stdout.txt"'
    assert download.content.decode() == f"<b>{token}</b>\n"


def test_resubmit_refused_with_a_message(rows, client_for):
    project_services.quota_set(project=rows.alpha, resource="core_hours", limit=0)
    response = client_for(rows.alice).post(reverse("jobs:clone", args=[rows.render.pk]), follow=True)
    assert response.redirect_chain[-1][0] == rows.render.get_absolute_url()
    assert any("asking for 1" in m for m in messages_of(response))
    response = client_for(rows.amy).post(reverse("jobs:clone", args=[rows.amy_job.pk]), follow=True)
    assert any("no user name on testbed" in m for m in messages_of(response))
    assert Job.objects.count() == 4


# --- Tenant isolation, anonymous ----------------------------------------------------------------


@pytest.mark.parametrize("who", ["mallory", "bob", "amy"])
def test_another_users_job_is_404_on_every_url(rows, client_for, who):
    client = client_for(getattr(rows, who))
    for name, url in job_urls(rows.train).items():
        assert client.get(url).status_code == (405 if name in POST_ONLY else 404), name
        assert client.post(url, {"name": "stolen"}).status_code == 404, name
    rows.train.refresh_from_db()
    assert rows.train.state == State.PENDING
    assert Job.objects.count() == 4 and not JobTemplate.objects.exists()


def test_anonymous_is_sent_to_login(rows, client):
    urls = [reverse("jobs:list"), reverse("jobs:compose"), reverse("jobs:estimate"), *job_urls(rows.train).values()]
    for url in urls:
        for method in (client.get, client.post):
            response = method(url)
            assert response.status_code == 302, url
            assert response["Location"].startswith(reverse("account_login")), url
    rows.train.refresh_from_db()
    assert rows.train.state == State.PENDING and Job.objects.count() == 4


def test_output_when_the_cluster_cannot_be_reached(rows, client_for):
    """The fragment says why instead of failing; a download is not an empty file."""
    rows.cluster.command_nodes.update(enabled=False)
    alice = client_for(rows.alice)
    response = alice.get(reverse("jobs:output", args=[rows.train.pk]))
    assert response.status_code == 200
    assert 'class="alert alert-warning' in response.content.decode()
    assert "no enabled command node" in response.content.decode()
    download = alice.get(reverse("jobs:output", args=[rows.train.pk]), {"download": "1"})
    assert download.status_code == 503
    assert "Content-Disposition" not in download
    assert "no enabled command node" in download.content.decode()
