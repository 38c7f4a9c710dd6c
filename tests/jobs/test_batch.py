"""Batch submission (jobs.submission, SlurmClient.submit_many) on the REAL
Slurm test bed: several jobs in one SSH exec, scripts that try to break out
of the batch script, one bad job among good ones, exactly once when a
worker dies or the connection breaks, two workers at once, the cluster's
submission stream, and jobs that ride with another job's message."""
import concurrent.futures
import os
import subprocess
import threading
import uuid
from datetime import timedelta
from pathlib import Path
from unittest import mock

import pytest
from django.db import connection
from django.test import TestCase
from django.utils import timezone

from clusters.backends import ssh
from clusters.backends.base import BackendUnavailable, CommandFailed, InvalidRequest, SubmitRequest
from clusters.backends.slurm import SlurmClient, parse_batch_output, script_with_environment
from clusters.services import slurm_client
from jobs import services, submission, tasks
from jobs.models import Job, State
from projects.models import Quota

HELD = "#!/bin/bash\n#SBATCH --hold\ntrue\n"


@pytest.fixture(autouse=True)
def _fresh_pools():
    ssh.close_all()
    yield
    ssh.close_all()


@pytest.fixture
def bed(slurm):
    """The `slurm` cast; none of our jobs stays in Slurm's queue afterwards."""
    yield slurm
    ids = [j for j in Job.objects.exclude(scheduler_id="").values_list("scheduler_id", flat=True)]
    client = slurm_client(slurm.cluster)
    for sid in ids:
        try:
            client.cancel(sid, as_user="ada")
        except Exception:  # noqa: BLE001 - finished already, or bert's
            try:
                client.cancel(sid, as_user="bert")
            except Exception:  # noqa: BLE001
                pass


def queued(c, n=1, **fields):
    """`n` jobs saved as queued, their messages dropped (nothing submitted)."""
    defaults = dict(owner=c.alice, project=c.alpha, cluster=c.cluster, name="batch", script=HELD,
                    time_limit_minutes=2)
    defaults.update(fields)
    with mock.patch.object(tasks.submit_job, "delay"):
        with TestCase.captureOnCommitCallbacks(execute=True):
            return [services.job_create(**defaults) for _ in range(n)]


def count_execs(monkeypatch):
    """Commands run on the command nodes, by program ("batch": a batch of sbatch)."""
    calls = []
    real_run = ssh.SSHPool.run_parallel  # every command goes through it (run too)

    def counting_run(self, commands, **kwargs):
        for argv, _stdin, _env in commands:
            calls.append("batch" if list(argv) == ["sh", "-s"] else argv[0] if argv[0] != "sudo" else argv[4])
        return real_run(self, commands, **kwargs)

    monkeypatch.setattr(ssh.SSHPool, "run_parallel", counting_run)
    return calls


def slurm_ids_named(c, jobs):
    """{Slurm job name: [Slurm ids]}: exactly one id each if nothing was submitted twice."""
    return slurm_client(c.cluster).find_jobs_by_name([j.slurm_name for j in jobs])


def reserved(project):
    return Quota.objects.get(project=project, resource="core_hours").reserved


# --- several jobs, one exec ---------------------------------------------------------------


def test_one_message_submits_every_queued_job_of_the_cluster_in_one_exec(bed, monkeypatch):
    jobs = queued(bed, 5) + queued(bed, 2, owner=bed.bob, project=bed.beta)  # bert, account beta
    calls = count_execs(monkeypatch)

    outcome = services.job_submit_message(job_id=jobs[0].pk)

    assert sorted(outcome.submitted) == sorted(j.pk for j in jobs) and not outcome.failed
    assert calls.count("batch") == 1  # ONE exec: five sbatch as ada, two as bert
    assert "sbatch" not in calls
    ids = set()
    for job in jobs:
        job.refresh_from_db()
        assert job.state == State.PENDING and job.scheduler_id.isdigit() and job.submit_attempts == 1
        assert job.submitted_at and job.scheduler_state == "PENDING"
        ids.add(job.scheduler_id)
    assert len(ids) == 7
    assert all(len(v) == 1 for v in slurm_ids_named(bed, jobs).values())
    entries = slurm_client(bed.cluster).queue(sorted(ids))
    assert {e.user for e in entries.values()} == {"ada", "bert"}

    # The other jobs' messages find their job taken: one read, no exec.
    calls.clear()
    assert services.job_submit_message(job_id=jobs[3].pk).claimed == []
    assert calls == []


def test_batches_are_at_most_batch_max_and_all_are_drained(bed, monkeypatch):
    monkeypatch.setattr(submission, "BATCH_MAX", 3)
    jobs = queued(bed, 7)
    calls = count_execs(monkeypatch)

    outcome = services.job_submit_message(job_id=jobs[-1].pk)

    assert sorted(outcome.submitted) == sorted(j.pk for j in jobs)
    assert calls.count("batch") == 3  # 3 + 3 + 1
    assert Job.objects.filter(state=State.PENDING).count() == 7


# --- scripts cannot break out -------------------------------------------------------------


def stored_script(scheduler_id):
    """The script Slurm stored for a job, byte for byte."""
    env = {**os.environ, "SLURM_CONF": os.environ["SLURM_TEST_SLURM_CONF"]}
    return subprocess.run(["scontrol", "write", "batch_script", scheduler_id, "-"], env=env, check=True,
                          capture_output=True).stdout.decode()


def test_scripts_with_delimiters_quotes_and_substitutions_arrive_unchanged(bed):
    marker = Path("/tmp") / f"nephele-pwned-{uuid.uuid4().hex}"
    head = "#!/bin/bash\n#SBATCH --hold\n"  # held: nothing in them ever runs
    scripts = {
        "heredocs": head + f"cat <<'EOF'\nNEPHELE_EOF_0123456789abcdef\nEOF\nNEPHELE_EOF_\n$(touch {marker})\n",
        "quotes": head + f"echo \"it's\" 'a \"test\"' `touch {marker}` '$(touch {marker})' \\\n  next\n",
        "no final newline": head + f"touch {marker}; printf '%s' done",
        "odd bytes": head + "printf '\\t\\r\r'\n\techo é ü \\$HOME $((1+1)) ; exit 0 # ')\n",
    }
    jobs = {}
    for label, script in scripts.items():
        (jobs[label],) = queued(bed, name=label, script=script,
                                environment={"EVIL": f"$(touch {marker})'\"\nNEPHELE_EOF_", "OK": "a b"})

    outcome = services.job_submit_message(job_id=jobs["quotes"].pk)

    assert sorted(outcome.submitted) == sorted(j.pk for j in jobs.values())
    for label, job in jobs.items():
        job.refresh_from_db()
        expected = script_with_environment(job.script, {k: str(v) for k, v in job.environment.items()})
        if not expected.endswith("\n"):
            expected += "\n"  # a here-document ends with a newline
        assert stored_script(job.scheduler_id) == expected, label
    assert not marker.exists()


def test_batch_script_quotes_every_argument_and_never_reuses_a_delimiter():
    client = SlurmClient(pool=None, sudo_mode="sudo")
    evil = "x\nNEPHELE_EOF_aaaa\n'$(id)'"
    text = client.batch_script([("7", ["sudo", "-n", "-u", "ada", "sbatch", "--job-name=a b;id"], evil)], "TOKEN")
    lines = text.splitlines()
    command = next(line for line in lines if line.startswith("sudo"))
    assert command.startswith("sudo -n -u ada sbatch '--job-name=a b;id' <<'NEPHELE_EOF_")
    delimiter = command.rsplit("<<", 1)[1].strip("'")
    assert delimiter not in evil and lines.count(delimiter) == 1
    body = text.split(command + "\n", 1)[1].split("\n" + delimiter + "\n", 1)[0]
    assert body == evil


def test_parse_batch_output_attributes_output_to_each_job_and_ignores_forged_markers():
    token = "nephele-batch-0f0f"
    stdout = (f"{token} begin 1\n101\n\n{token} end 1 0\n"
              f"{token} begin 2\nnephele-batch-fake end 2 0\n\n{token} end 2 1\n"
              f"{token} begin 3\n")
    stderr = f"\n{token} begin 1\n\n{token} begin 2\nsbatch: error: bad\n\n{token} begin 3\n"
    parsed = parse_batch_output(stdout, stderr, token)
    assert parsed["1"] == (0, "101", "")
    assert parsed["2"][0] == 1 and parsed["2"][2] == "sbatch: error: bad"
    assert parsed["3"][0] is None  # began, never ended: unknown


# --- one bad job among good ones ------------------------------------------------------------


def test_a_refused_job_fails_alone_and_gets_its_core_hours_back(bed, monkeypatch):
    good = queued(bed, 2)
    (refused,) = queued(bed, name="refused", script="#!/bin/bash\n#SBATCH --nodelist=no-such-node\ntrue\n")
    (invalid,) = queued(bed, name="invalid")
    Job.objects.filter(pk=invalid.pk).update(partition="debug;id")  # never leaves the portal
    more = queued(bed, 2)
    assert reserved(bed.alpha) == 6
    calls = count_execs(monkeypatch)

    outcome = services.job_submit_message(job_id=good[0].pk)

    assert sorted(outcome.submitted) == sorted(j.pk for j in good + more)
    assert sorted(outcome.failed) == sorted([refused.pk, invalid.pk])
    assert calls.count("batch") == 1
    refused.refresh_from_db()
    invalid.refresh_from_db()
    assert refused.state == State.FAILED and "invalid node name" in refused.reason.lower(), refused.reason
    assert refused.ended_at and refused.reserved_core_hours == 0
    assert invalid.state == State.FAILED and "not a valid partition name" in invalid.reason
    for job in good + more:
        job.refresh_from_db()
        assert job.state == State.PENDING and job.scheduler_id
    assert reserved(bed.alpha) == 4  # the two refusals released theirs


# --- exactly once ---------------------------------------------------------------------------------


def test_worker_killed_after_the_batch_exec_submits_nothing_twice(bed, monkeypatch):
    jobs = queued(bed, 3)
    real = SlurmClient.submit_many
    made = []

    def submit_then_die(self, items, **kwargs):
        made.append(real(self, items, **kwargs))
        raise SystemExit("worker killed")

    monkeypatch.setattr(SlurmClient, "submit_many", submit_then_die)
    with pytest.raises(SystemExit):
        services.job_submit_message(job_id=jobs[0].pk)
    monkeypatch.setattr(SlurmClient, "submit_many", real)
    assert set(Job.objects.values_list("state", flat=True)) == {State.SUBMITTING}

    # Messages redelivered now leave the fresh claim alone (its worker may be
    # alive and still in sbatch) ...
    calls = count_execs(monkeypatch)
    for job in jobs:
        assert services.job_submit_message(job_id=job.pk).claimed == []
    assert services.jobs_submit_pending(cluster=bed.cluster) == 0
    assert calls == []
    # ... once the claim is stale, the periodic sync adopts all three.
    Job.objects.update(state_changed=timezone.now() - submission.STALE_AFTER - timedelta(seconds=1))
    assert services.jobs_submit_pending(cluster=bed.cluster) == 3

    assert "batch" not in calls and "sbatch" not in calls  # looked up (squeue, sacct), not submitted again
    for job in jobs:
        job.refresh_from_db()
        assert job.state == State.PENDING and job.submit_attempts == 2
        assert job.scheduler_id == made[0][str(job.pk)]
    assert all(len(ids) == 1 for ids in slurm_ids_named(bed, jobs).values())


def test_connection_lost_mid_batch_is_retried_by_its_claim_only(bed, monkeypatch):
    jobs = queued(bed, 4)
    real = SlurmClient.submit_many
    made = []

    def half_then_break(self, items, **kwargs):
        made.append(real(self, items[:2], **kwargs))  # two got through, then the link broke
        raise BackendUnavailable("connection to the node broke during the command")

    monkeypatch.setattr(SlurmClient, "submit_many", half_then_break)
    with pytest.raises(BackendUnavailable) as info:
        services.job_submit_message(job_id=jobs[0].pk)
    monkeypatch.setattr(SlurmClient, "submit_many", real)
    exc = info.value
    assert sorted(exc.job_ids) == sorted(j.pk for j in jobs) and exc.claimed_at

    # A retry with another claim's timestamp takes nothing.
    assert services.job_submit_message(job_id=jobs[0].pk, retry_ids=exc.job_ids,
                                       claimed_at=exc.claimed_at - timedelta(seconds=1)).claimed == []
    # The claim's own retry adopts the two that went through, submits the rest.
    outcome = services.job_submit_message(job_id=jobs[0].pk, retry_ids=exc.job_ids, claimed_at=exc.claimed_at)
    assert sorted(outcome.submitted) == sorted(j.pk for j in jobs)
    for job in jobs:
        job.refresh_from_db()
        assert job.state == State.PENDING
    assert {jobs[0].scheduler_id, jobs[1].scheduler_id} == set(made[0].values())
    assert all(len(ids) == 1 for ids in slurm_ids_named(bed, jobs).values())


def test_jobs_the_node_did_not_report_on_stay_submitting_for_the_retry(bed, monkeypatch):
    jobs = queued(bed, 3)
    real = SlurmClient.submit_many

    def last_unknown(self, items, **kwargs):
        results = real(self, items, **kwargs)
        results[items[-1][0]] = BackendUnavailable("the batch stopped before sbatch reported on this job")
        return results

    monkeypatch.setattr(SlurmClient, "submit_many", last_unknown)
    with pytest.raises(BackendUnavailable) as info:
        services.job_submit_message(job_id=jobs[0].pk)
    monkeypatch.setattr(SlurmClient, "submit_many", real)
    assert info.value.job_ids == [jobs[-1].pk]
    states = dict(Job.objects.values_list("pk", "state"))
    assert [states[j.pk] for j in jobs] == [State.PENDING, State.PENDING, State.SUBMITTING]

    services.job_submit_message(job_id=jobs[0].pk, retry_ids=info.value.job_ids,
                                claimed_at=info.value.claimed_at)
    jobs[-1].refresh_from_db()
    assert jobs[-1].state == State.PENDING  # adopted: sbatch had run for it
    assert len(slurm_ids_named(bed, jobs)[jobs[-1].slurm_name]) == 1


@pytest.fixture
def eager_retries(celery_eager):
    """apply() runs a task's retries at once (countdowns ignored)."""
    celery_eager.conf.task_eager_propagates = False
    yield
    celery_eager.conf.task_eager_propagates = True


def test_the_task_retries_its_claim_and_gives_up_cleanly(bed, monkeypatch, eager_retries):
    jobs = queued(bed, 2)
    attempts = []

    def unreachable(self, items, **kwargs):
        attempts.append([key for key, *_ in items])
        raise BackendUnavailable("no command node reachable")

    monkeypatch.setattr(SlurmClient, "submit_many", unreachable)
    tasks.submit_job.apply(args=(jobs[0].pk,))  # eager: retries run at once

    assert len(attempts) == 1 + tasks.submit_job.max_retries
    assert all(sorted(a) == sorted(str(j.pk) for j in jobs) for a in attempts)
    for job in jobs:
        job.refresh_from_db()
        assert job.state == State.FAILED and "No command node" in job.reason
        assert job.submit_attempts == len(attempts)
    assert reserved(bed.alpha) == 0


def test_explicit_job_submit_adopts_a_job_left_submitting(bed):
    (job,) = queued(bed)
    sid = slurm_client(bed.cluster).submit(SubmitRequest(
        script=HELD, job_name=job.slurm_name, workdir=job.workdir, output=job.output_path, error=job.error_path,
        account="alpha", time_limit_minutes=2), as_user="ada")
    Job.objects.filter(pk=job.pk).update(state=State.SUBMITTING, state_changed=timezone.now())

    job = services.job_submit(job_id=job.pk)

    assert job.state == State.PENDING and job.scheduler_id == sid


# --- two workers at once ---------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_two_workers_at_once_submit_each_job_exactly_once(bed):
    jobs = queued(bed, 12)
    barrier = threading.Barrier(3)

    def worker(job):
        barrier.wait()
        try:
            return services.job_submit_message(job_id=job.pk)
        finally:
            connection.close()

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        outcomes = list(pool.map(worker, [jobs[0], jobs[5], jobs[11]]))

    claimed = [pk for o in outcomes for pk in o.claimed]
    assert sorted(claimed) == sorted(j.pk for j in jobs)  # each job in exactly one batch
    assert set(Job.objects.values_list("state", flat=True)) == {State.PENDING}
    assert Job.objects.values("scheduler_id").distinct().count() == 12
    assert all(len(ids) == 1 for ids in slurm_ids_named(bed, jobs).values())


@pytest.mark.django_db(transaction=True)
def test_a_message_that_finds_the_stream_taken_leaves_its_job_to_the_worker_holding_it(bed, monkeypatch):
    (first,) = queued(bed)
    real = SlurmClient.submit_many
    in_exec, go_on, batches = threading.Event(), threading.Event(), []

    def slow(self, items, **kwargs):
        batches.append(sorted(int(key) for key, *_ in items))
        in_exec.set()
        assert go_on.wait(30)
        return real(self, items, **kwargs)

    monkeypatch.setattr(SlurmClient, "submit_many", slow)

    def holder():
        try:
            return services.job_submit_message(job_id=first.pk)
        finally:
            connection.close()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        held = pool.submit(holder)
        assert in_exec.wait(30)  # the holder is in its first batch's exec
        (second,) = queued(bed)
        assert services.job_submit_message(job_id=second.pk).claimed == []  # at once: the stream is taken
        second.refresh_from_db()
        assert second.state == State.QUEUED
        go_on.set()
        outcome = held.result(60)

    assert batches == [[first.pk], [second.pk]]  # the holder took it in its next batch
    assert sorted(outcome.submitted) == [first.pk, second.pk]
    second.refresh_from_db()
    assert second.state == State.PENDING


# --- lanes: a large batch runs as several execs side by side ----------------------------------


def test_a_large_batch_runs_in_lanes_and_submits_each_job_once(bed, monkeypatch):
    from clusters.backends.slurm import LANE_MIN

    bed.cluster.submit_lanes = 2
    bed.cluster.save()
    jobs = queued(bed, LANE_MIN + 2) + queued(bed, LANE_MIN - 2, owner=bed.bob, project=bed.beta)
    calls = count_execs(monkeypatch)
    outcome = services.job_submit_message(job_id=jobs[0].pk)

    assert sorted(outcome.submitted) == sorted(j.pk for j in jobs)
    assert calls.count("batch") == 2  # two execs, one per lane, in one claim
    assert all(len(ids) == 1 for ids in slurm_ids_named(bed, jobs).values())
    ids = set()
    for job in jobs:
        job.refresh_from_db()
        assert job.state == State.PENDING and job.submit_attempts == 1
        ids.add(job.scheduler_id)
    assert len(ids) == len(jobs)
    users = {e.user for e in slurm_client(bed.cluster).queue(sorted(ids)).values()}
    assert users == {"ada", "bert"}


def test_small_batches_and_one_lane_clusters_use_one_exec(bed, monkeypatch):
    from clusters.backends.slurm import LANE_MIN

    bed.cluster.submit_lanes = 2
    bed.cluster.save()
    calls = count_execs(monkeypatch)
    jobs = queued(bed, 2 * LANE_MIN - 1)  # too few for two lanes of LANE_MIN
    services.job_submit_message(job_id=jobs[0].pk)
    assert calls.count("batch") == 1

    bed.cluster.submit_lanes = 1
    bed.cluster.save()
    calls.clear()
    jobs = queued(bed, 2 * LANE_MIN)
    assert len(services.job_submit_message(job_id=jobs[0].pk).submitted) == len(jobs)
    assert calls.count("batch") == 1


def test_a_broken_lane_leaves_only_its_jobs_for_the_retry(bed, monkeypatch):
    from clusters.backends.slurm import LANE_MIN

    bed.cluster.submit_lanes = 2
    bed.cluster.save()
    jobs = queued(bed, 2 * LANE_MIN)
    real = ssh.SSHPool.run_parallel

    def second_lane_breaks(self, commands, **kwargs):
        first = real(self, commands[:1], **kwargs)  # the second lane never ran
        return first + [BackendUnavailable("connection broke during the command")] * (len(commands) - 1)

    monkeypatch.setattr(ssh.SSHPool, "run_parallel", second_lane_breaks)
    with pytest.raises(BackendUnavailable) as info:
        services.job_submit_message(job_id=jobs[0].pk)
    monkeypatch.setattr(ssh.SSHPool, "run_parallel", real)
    lane_two = sorted(j.pk for j in jobs)[1::2]  # jobs are dealt to the lanes in turn
    assert sorted(info.value.job_ids) == lane_two
    states = dict(Job.objects.values_list("pk", "state"))
    assert {pk for pk, state in states.items() if state == State.SUBMITTING} == set(lane_two)

    outcome = services.job_submit_message(job_id=jobs[0].pk, retry_ids=info.value.job_ids,
                                          claimed_at=info.value.claimed_at)
    assert sorted(outcome.submitted) == lane_two
    assert all(len(ids) == 1 for ids in slurm_ids_named(bed, jobs).values())
    assert set(Job.objects.values_list("state", flat=True)) == {State.PENDING}


# --- fewer messages -------------------------------------------------------------------------------------


def test_a_job_rides_with_a_queued_job_whose_message_is_on_its_way(bed, monkeypatch):
    sent = []
    monkeypatch.setattr(tasks.submit_job, "delay", lambda job_id, *a, **k: sent.append(job_id))
    submission._messages_sent.clear()

    def create(name):
        with TestCase.captureOnCommitCallbacks(execute=True):
            return services.job_create(owner=bed.alice, project=bed.alpha, cluster=bed.cluster, name=name,
                                       script=HELD, time_limit_minutes=2)

    first, second, third = create("first"), create("second"), create("third")
    assert sent == [first.pk]  # the others ride with the first's message
    # An anchor that is too old (its message may be lost) is not used.
    Job.objects.filter(pk=first.pk).update(state_changed=timezone.now() - submission.ANCHOR_WINDOW * 2)
    fourth = create("fourth")
    assert sent == [first.pk, fourth.pk]

    services.job_submit_message(job_id=first.pk)
    for job in (first, second, third, fourth):
        job.refresh_from_db()
        assert job.state == State.PENDING
    # Once the anchor is submitted, the next job sends its own message.
    create("fifth")
    assert len(sent) == 3


def test_no_message_is_saved_in_eager_mode(bed):
    # Eager (tests, development): every job is submitted before its request ends.
    jobs = []
    for i in range(3):
        with TestCase.captureOnCommitCallbacks(execute=True):
            jobs.append(services.job_create(owner=bed.alice, project=bed.alpha, cluster=bed.cluster,
                                            name=f"eager{i}", script=HELD, time_limit_minutes=2))
    for job in jobs:
        job.refresh_from_db()
        assert job.state == State.PENDING


def test_submit_many_reports_each_kind_of_result(bed):
    client = slurm_client(bed.cluster)
    wd = f"{bed.cluster.work_prefix}/ada"
    client.ensure_dir(wd)

    def request(name, **kw):
        kw.setdefault("script", HELD)
        return SubmitRequest(job_name=name, workdir=wd, output=f"{wd}/{name}.out", error=f"{wd}/{name}.err",
                             account="alpha", hold=True, **kw)

    results = client.submit_many([
        ("a", request("sm-ok"), "ada"),
        ("b", request("sm-refused", partition="nope"), "ada"),
        ("c", request("sm-invalid", partition="x;id"), "ada"),
        ("d", request("sm-root"), "root"),
    ])
    assert results["a"].isdigit()
    assert isinstance(results["b"], CommandFailed) and "partition" in str(results["b"]).lower()
    assert isinstance(results["c"], InvalidRequest) and isinstance(results["d"], InvalidRequest)
    client.cancel(results["a"], as_user="ada")
    with pytest.raises(ValueError):
        client.submit_many([("x y", request("sm-badkey"), "ada")])


def test_the_task_retry_submits_what_the_first_attempt_could_not(bed, monkeypatch, eager_retries):
    jobs = queued(bed, 3)
    real = SlurmClient.submit_many
    attempts = []

    def flaky(self, items, **kwargs):
        attempts.append(len(items))
        if len(attempts) == 1:
            raise BackendUnavailable("no command node reachable")
        return real(self, items, **kwargs)

    monkeypatch.setattr(SlurmClient, "submit_many", flaky)
    tasks.submit_job.apply(args=(jobs[0].pk,))

    assert attempts == [3, 3]
    for job in jobs:
        job.refresh_from_db()
        assert job.state == State.PENDING and job.submit_attempts == 2
    assert all(len(ids) == 1 for ids in slurm_ids_named(bed, jobs).values())
