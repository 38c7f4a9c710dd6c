"""Job submission and following on the REAL Slurm test bed, through the
portal's services (celery eager: job_create submits inline)."""
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError
from django.test import TestCase

from clusters.backends import ssh
from clusters.backends.slurm import SlurmClient
from clusters.services import slurm_client
from jobs import services
from jobs.models import Job, State
from projects.models import Quota
from projects.services import QuotaExceeded

from .conftest import wait_for_state

REPO = Path(__file__).resolve().parents[2]
TESTBED_SLURM = REPO / "scripts" / "slurm" / "testbed-slurm"


def create(cast, **fields):
    defaults = dict(owner=cast.alice, project=cast.alpha, cluster=cast.cluster, name="hello",
                    script="#!/bin/bash\necho hello from $(id -un)\n", time_limit_minutes=2)
    defaults.update(fields)
    # The submission task is dispatched on commit; run it (eagerly) here.
    with TestCase.captureOnCommitCallbacks(execute=True):
        job = services.job_create(**defaults)
    job.refresh_from_db()
    return job


def core_hours(project):
    return Quota.objects.get(project=project, resource="core_hours")


@pytest.fixture(autouse=True)
def _fresh_pools():
    ssh.close_all()
    yield
    ssh.close_all()


def test_submit_runs_as_the_user_and_completes_with_output(slurm):
    job = create(slurm)

    assert job.state == State.PENDING
    assert job.scheduler_id.isdigit()
    assert job.reserved_core_hours == 1 and core_hours(slurm.alpha).reserved == 1
    job = wait_for_state(job, {State.COMPLETED, State.FAILED})
    assert job.state == State.COMPLETED
    assert job.exit_code == 0
    assert job.started_at and job.ended_at and job.ended_at >= job.started_at
    assert services.job_output(job=job, stream="stdout").decode() == "hello from ada\n"
    quota = core_hours(slurm.alpha)
    assert quota.reserved == 0  # the reservation was settled with the real use
    assert job.used_core_hours is not None and quota.used == (1 if job.used_core_hours > 0 else 0)


def test_failing_job_records_exit_code_and_stderr(slurm):
    job = create(slurm, name="fails", script="#!/bin/bash\necho oops >&2\nexit 3\n")

    job = wait_for_state(job, {State.FAILED, State.COMPLETED})

    assert job.state == State.FAILED
    assert job.exit_code == 3
    assert "error" in job.reason
    assert services.job_output(job=job, stream="stderr").decode() == "oops\n"


def test_cancel_a_held_job(slurm):
    job = create(slurm, name="held", script="#!/bin/bash\n#SBATCH --hold\nsleep 60\n")
    client = slurm_client(slurm.cluster)
    assert client.queue([job.scheduler_id])[job.scheduler_id].state == "PENDING"

    job = services.job_cancel(job=job, actor=slurm.alice)

    assert job.state == State.CANCELLED
    assert core_hours(slurm.alpha).reserved == 0
    entry = client.queue([job.scheduler_id]).get(job.scheduler_id)
    assert entry is None or entry.state == "CANCELLED"
    with pytest.raises(ValidationError, match="already cancelled"):
        services.job_cancel(job=job, actor=slurm.alice)


def test_time_limit_ends_in_timeout(slurm):
    job = create(slurm, name="slow", script="#!/bin/bash\nsleep 300\n", time_limit_minutes=1)
    wait_for_state(job, {State.RUNNING})
    # Slurm enforces limits in whole minutes, checked every 30 s: move the
    # end time instead of waiting (as the backend tests do).
    env = {**os.environ, "SLURM_CONF": os.environ["SLURM_TEST_SLURM_CONF"]}
    for _ in range(10):  # slurmctld may be busy with other runs' jobs
        done = subprocess.run(["scontrol", "update", f"JobId={job.scheduler_id}", "EndTime=now"], env=env,
                              capture_output=True, text=True)
        if done.returncode == 0:
            break
        time.sleep(1)
    assert done.returncode == 0, done.stderr

    job = wait_for_state(job, {State.TIMEOUT, State.FAILED, State.CANCELLED, State.COMPLETED}, timeout=120)

    assert job.state == State.TIMEOUT
    assert "time limit" in job.reason


def test_sudo_mode_runs_each_users_job_as_that_user(slurm):
    slurm.cluster.accounts.update(account="beta")
    job = create(slurm, owner=slurm.bob, project=slurm.beta, script="#!/bin/bash\nid -un\n")

    job = wait_for_state(job, {State.COMPLETED, State.FAILED})

    assert services.job_output(job=job, stream="stdout").decode() == "bert\n"
    assert job.account == "beta"


def test_the_users_work_directory_is_private_unless_the_cluster_shares_it(slurm):
    job = create(slurm)
    assert job.state == State.PENDING and job.workdir.endswith("/ada")
    assert os.stat(job.workdir).st_mode & 0o7007 == 0  # no sticky bit, nothing for others
    acl = subprocess.run(["getfacl", "-cp", job.workdir], capture_output=True, text=True, check=True).stdout.split()
    assert "user:ada:rwx" in acl
    assert wait_for_state(job, {State.COMPLETED, State.FAILED}).state == State.COMPLETED  # ada could write there

    slurm.cluster.user_dirs = slurm.cluster.UserDirs.SHARED
    slurm.cluster.save(update_fields=["user_dirs"])
    job = create(slurm, cluster=slurm.cluster)
    assert job.state == State.PENDING
    assert os.stat(job.workdir).st_mode & 0o7777 == 0o1777


def test_command_node_down_fails_over_to_the_next(slurm):
    subprocess.run([str(TESTBED_SLURM), "stop-node", "2222"], check=True, capture_output=True)
    try:
        ssh.close_all()
        job = create(slurm, script="#!/bin/bash\n#SBATCH --hold\ntrue\n")
        assert job.state == State.PENDING and job.scheduler_id
        pool = ssh._POOLS and next(iter(ssh._POOLS.values()))  # the pool the service used
        services.job_cancel(job=job, actor=slurm.alice)
    finally:
        subprocess.run([str(TESTBED_SLURM), "start-node", "2222"], check=True, capture_output=True)
    assert pool and "127.0.0.1:2222" in pool.last_errors


def test_worker_killed_after_sbatch_does_not_submit_twice(slurm, celery_eager, monkeypatch):
    # The worker dies right after sbatch: the job stays `submitting` with no id.
    real_submit_many = SlurmClient.submit_many
    made = []

    def submit_then_die(self, items, **kwargs):
        made.append(real_submit_many(self, items, **kwargs))
        raise SystemExit("worker killed")

    monkeypatch.setattr(SlurmClient, "submit_many", submit_then_die)
    with pytest.raises(SystemExit):
        create(slurm, script="#!/bin/bash\n#SBATCH --hold\ntrue\n")
    job = Job.objects.get(name="hello", owner=slurm.alice)
    assert job.state == State.SUBMITTING and job.scheduler_id == ""
    monkeypatch.setattr(SlurmClient, "submit_many", real_submit_many)
    slurm_id = made[0][str(job.pk)]

    # The job's own message, redelivered soon after, leaves it alone (for all
    # it knows another worker is submitting it right now) ...
    services.jobs_submit_batch(job_ids=[job.pk])
    job.refresh_from_db()
    assert job.state == State.SUBMITTING
    # ... the explicit retry finds the job by its name and adopts it.
    services.job_submit(job_id=job.pk)

    job.refresh_from_db()
    assert job.state == State.PENDING
    assert job.scheduler_id == slurm_id
    assert slurm_client(slurm.cluster).find_jobs_by_name([job.slurm_name])[job.slurm_name] == [slurm_id]
    services.job_cancel(job=job, actor=slurm.alice)


def test_shell_metacharacters_never_execute(slurm, tmp_path):
    marker = Path("/tmp") / f"nephele-pwned-{uuid.uuid4().hex}"
    evil = f"$(touch {marker}); `touch {marker}`; touch {marker} #'\""
    job = create(slurm, name=f"x$(touch {marker});`id`'", environment={"EVIL": evil, "OK": "a b"},
                 script=f"#!/bin/bash\nprintf '%s|%s' \"$EVIL\" \"$OK\"\n")

    job = wait_for_state(job, {State.COMPLETED, State.FAILED})

    assert job.state == State.COMPLETED
    assert services.job_output(job=job, stream="stdout").decode() == f"{evil}|a b"
    for field, value in [("partition", f"debug;touch {marker}"), ("array", f"0-1;touch {marker}")]:
        with pytest.raises(ValidationError) as info:
            create(slurm, **{field: value})
        assert field in info.value.message_dict
    with pytest.raises(ValidationError) as info:
        create(slurm, environment={f"X;touch {marker}": "1"})
    assert "environment" in info.value.message_dict
    assert not marker.exists()


def test_sync_reads_all_active_jobs_with_one_squeue_call(slurm, monkeypatch):
    jobs = [create(slurm, name=f"held-{i}", script="#!/bin/bash\n#SBATCH --hold\ntrue\n") for i in range(4)]
    calls = []
    real_run = ssh.SSHPool.run

    def counting_run(self, argv, **kwargs):
        calls.append(argv[0] if argv[0] != "sudo" else argv[4])
        return real_run(self, argv, **kwargs)

    monkeypatch.setattr(ssh.SSHPool, "run", counting_run)
    result = services.jobs_sync(cluster=slurm.cluster)

    assert result["checked"] == 4
    assert calls.count("squeue") == 1
    assert "sacct" not in calls  # all still queued
    for job in jobs:
        job.refresh_from_db()
        assert job.state == State.PENDING
        assert "held" in job.reason.lower() or job.reason  # Slurm's reason, e.g. JobHeldUser
    monkeypatch.setattr(ssh.SSHPool, "run", real_run)
    for job in jobs:
        services.job_cancel(job=job, actor=slurm.alice)


def test_over_quota_is_refused_before_the_cluster_sees_anything(slurm, monkeypatch):
    called = []
    real_submit_many = SlurmClient.submit_many

    def counting_submit(self, items, **kwargs):
        called.extend(1 for _ in items)
        return real_submit_many(self, items, **kwargs)

    monkeypatch.setattr(SlurmClient, "submit_many", counting_submit)
    Quota.objects.filter(project=slurm.alpha, resource="core_hours").update(limit=10, used=8)

    with pytest.raises(QuotaExceeded) as info:
        create(slurm, partition="long", cpus=1, time_limit_minutes=180)  # 3 core-hours, 2 left

    assert info.value.as_dict() == {
        "resource": "core_hours", "scope": "project", "limit": 10, "current": 8, "requested": 3,
        "detail": str(info.value),
    }
    assert called == []
    assert not Job.objects.exists()
    assert core_hours(slurm.alpha).reserved == 0
    # Exactly what is left still fits.
    job = create(slurm, partition="long", cpus=2, time_limit_minutes=60,
                 script="#!/bin/bash\n#SBATCH --hold\ntrue\n")
    assert called == [1] and job.reserved_core_hours == 2
    assert core_hours(slurm.alpha).reserved == 2
    services.job_cancel(job=job, actor=slurm.alice)


def test_user_without_posix_account_is_told_to_ask_staff(slurm):
    with pytest.raises(ValidationError) as info:
        create(slurm, owner=slurm.amy)

    assert "no user name on testbed" in info.value.message_dict["cluster"][0]


def test_partition_limits_are_checked_before_submission(slurm):
    with pytest.raises(ValidationError) as info:
        create(slurm, partition="debug", time_limit_minutes=31)
    assert "at most 30 minutes" in info.value.message_dict["time_limit_minutes"][0]
    with pytest.raises(ValidationError) as info:
        create(slurm, cpus=3)  # the node has 2 CPUs
    assert "cpus" in info.value.message_dict


def test_array_job_is_one_job_with_task_counts(slurm):
    job = create(slurm, name="array", array="0-3", script="#!/bin/bash\necho task $SLURM_ARRAY_TASK_ID\n")

    assert job.task_count == 4 and job.reserved_core_hours == 1  # ceil(4 tasks * 2 min / 60)
    job = wait_for_state(job, {State.COMPLETED, State.FAILED})

    assert job.state == State.COMPLETED
    assert job.array_tasks == {"COMPLETED": 4}
    assert job.exit_code == 0
    # Each task writes its own file; the first task's is the default.
    assert services.job_output(job=job, stream="stdout").decode() == "task 0\n"
    assert services.job_output(job=job, stream="stdout", task=2).decode() == "task 2\n"


def test_template_parameters_are_quoted_into_the_script(slurm):
    from jobs.models import JobTemplate

    template = JobTemplate.objects.create(
        name="Greeter", script="#!/bin/bash\necho {{ greeting }} x{{ times }}\n",
        parameters=[{"name": "greeting", "type": "str"},
                    {"name": "times", "type": "int", "default": 2, "min": 1, "max": 5}])

    template.cpus, template.partition, template.time_limit_minutes = 2, "debug", 20
    template.save()

    job = create(slurm, template=template, parameters={"greeting": "hi; id"}, script="", time_limit_minutes=None)

    assert (job.cpus, job.nodes, job.partition, job.time_limit_minutes) == (2, 1, "debug", 20)

    assert job.script == "#!/bin/bash\necho 'hi; id' x2\n"
    job = wait_for_state(job, {State.COMPLETED, State.FAILED})
    assert services.job_output(job=job, stream="stdout").decode() == "hi; id x2\n"
    with pytest.raises(ValidationError) as info:
        create(slurm, template=template, parameters={"greeting": "x", "times": 9}, script="")
    assert info.value.message_dict == {"parameters.times": ["times must be at most 5."]}
