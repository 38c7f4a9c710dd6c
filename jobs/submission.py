"""Submitting jobs to Slurm: in batches, each job exactly once.

A Celery message (`tasks.submit_job`, sent when job_create commits) names
one job. The worker that takes it becomes the cluster's submission stream
(a PostgreSQL advisory lock per cluster, `jobs_submit_all`) and submits that
job and every other queued job of the cluster, BATCH_MAX at a time, each
batch with ONE SSH exec (`SlurmClient.submit_many`: a shell script on stdin
running one `sudo -n -u <user> sbatch` per job; a large batch as the
cluster's `submit_lanes` such scripts side by side), until a claim finds
nothing; then it lets go of the stream and looks once more for jobs that
came meanwhile. A message that finds the stream taken returns at once: the
worker holding it takes that job in its next batch, or in its last look.
So batches grow with the load by themselves (everything that arrived during
one exec goes in the next), with no delay when the cluster is idle, and a
message whose job a batch took already costs one read.

Fewer messages: a job created while the last job this web process sent a
message for (the anchor) is still queued, at most ANCHOR_WINDOW old and
held by nobody, sends no message of its own (`batch_anchor`, which locks
the anchor with SKIP LOCKED inside the creating transaction). The anchor is
then still queued at the commit, so it is claimed later, by a claim query
that waited for that lock or started after the commit; the claimer then
claims again until a claim finds nothing, and the new job goes along.
(Only jobs that own a message are anchors; on databases without SKIP
LOCKED every job sends its message.) The periodic sync submits any job
left queued for over QUEUED_TOO_LONG, whatever the reason (a lost message).

Exactly once:

1. Claim. The batch's rows are locked (the message's own job waiting for
   its lock, the others `SKIP LOCKED`, so two claims never take the same
   job, stream or not), moved to `submitting` with ONE timestamp for the whole batch
   (`state_changed`, the claim's token) and committed before anything runs
   on the node. A crash from here on leaves the jobs `submitting`.
2. A job that was already `submitting` when claimed may have reached sbatch
   before: the Slurm names (`nephele-<pk>-<uid12>`) of all such jobs are
   looked up first (one squeue + one sacct call) and a job found is adopted,
   not submitted again.
3. The exec reports each job on its own: a Slurm id (recorded `pending`), a
   refusal (that job alone is recorded `failed` and its core-hours
   released), or unknown (the connection broke or timed out mid-batch):
   unknown jobs stay `submitting` and the task retries them (step 2 first).
4. Who may take a `submitting` job: the claim that made it (its retry
   carries the claim's timestamp and takes a job only while `state_changed`
   still equals it), `job_submit` (explicitly, for a job known to be
   nobody else's), and, once a claim is older than STALE_AFTER (its worker
   died), any batch; the periodic cluster sync recovers such jobs. A claim
   is refreshed at every attempt and an attempt (the exec's timeout) is far
   shorter than STALE_AFTER, so a live claim is never taken over.
"""
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import DatabaseError, connection, transaction
from django.db.models import CharField, F, Q
from django.db.models.expressions import RawSQL
from django.utils import timezone

from clusters import services as cluster_services
from clusters.backends.base import BackendError, BackendUnavailable, CommandFailed, SubmitRequest
from clusters.models import SlurmCluster
from projects import services as project_services
from projects.models import Resource

from .models import Job, State

log = logging.getLogger(__name__)

# Jobs per claim. sbatch takes ~7 ms, so a full batch is a third of a second
# on the node in one lane; the exec's timeout grows with the batch (submit_many).
BATCH_MAX = 50
# A `submitting` claim older than this belongs to a dead worker. Far longer
# than an attempt (exec timeout) plus the longest retry countdown.
STALE_AFTER = timedelta(minutes=10)
# A `queued` job older than this lost its message: the periodic sync submits it.
QUEUED_TOO_LONG = timedelta(minutes=1)
# A new job rides with a queued job at most this old (see batch_anchor), so a
# message that was lost strands new jobs for this long at most.
ANCHOR_WINDOW = timedelta(seconds=2)


@dataclass
class BatchOutcome:
    """What one batch did: job ids submitted (or adopted), refused, and
    still unknown (left `submitting` for the retry)."""

    claimed_at: datetime | None = None
    cluster_id: int | None = None
    submitted: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    unknown: list = field(default_factory=list)

    @property
    def claimed(self):
        return self.submitted + self.failed + self.unknown


def _submit_request(job, *, hold=False):
    return SubmitRequest(
        script=job.script, job_name=job.slurm_name, workdir=job.workdir, output=job.output_path,
        error=job.error_path, account=job.account, partition=job.partition, nodes=job.nodes, cpus=job.cpus,
        memory_mb=job.memory_mb, time_limit_minutes=job.time_limit_minutes, gpus=job.gpus, array=job.array,
        environment={k: str(v) for k, v in job.environment.items()}, hold=hold,
    )


def _claim(*, job_ids, force, retry_ids, claimed_at, cluster_id, others, limit):
    """Lock, check and move the batch's jobs to `submitting` (committed).
    Returns (cluster_id, jobs, may_exist: ids that were `submitting`)."""
    now = timezone.now()
    stale = now - STALE_AFTER
    taken, may_exist = {}, set()
    with transaction.atomic():
        # Asked-for jobs wait for their lock (whoever holds it decides first).
        for job in Job.objects.select_for_update(of=("self",)).filter(pk__in=list(job_ids)).order_by("pk"):
            if _may_take(job.state, job.state_changed, stale, force=force):
                taken[job.pk] = job
        # This claim's own retry: only jobs nobody re-claimed since.
        if retry_ids and claimed_at is not None:
            for job in Job.objects.select_for_update(of=("self",)).filter(
                    pk__in=list(retry_ids), state=State.SUBMITTING, state_changed=claimed_at).order_by("pk"):
                taken.setdefault(job.pk, job)
        if cluster_id is None and taken:
            cluster_id = next(iter(taken.values())).cluster_id
        if others and cluster_id is not None and len(taken) < limit:
            # Everyone else's: what no other worker holds right now.
            free = (Job.objects.select_for_update(of=("self",), skip_locked=True)
                    .filter(Q(state=State.QUEUED) | Q(state=State.SUBMITTING, state_changed__lt=stale),
                            cluster_id=cluster_id)
                    .exclude(pk__in=list(taken)).order_by("pk")[:limit - len(taken)])
            for job in free:
                taken[job.pk] = job
        jobs = [j for j in taken.values() if j.cluster_id == cluster_id]
        for job in jobs:
            if job.state == State.SUBMITTING:
                may_exist.add(job.pk)
            # Checked against the state machine here, written below in ONE
            # UPDATE, with one timestamp for all: the claim's token.
            job.transition("begin_submit", save=False, submit_attempts=job.submit_attempts + 1)
            job.state_changed = now
        if jobs:
            Job.objects.filter(pk__in=[j.pk for j in jobs]).update(
                state=State.SUBMITTING, state_changed=now, submit_attempts=F("submit_attempts") + 1)
    return cluster_id, jobs, may_exist, now


def _may_take(state, changed, stale_before, *, force=False):
    """Queued, or `submitting` under a claim changed before `stale_before`
    (its worker died), or under any claim with `force`."""
    return state == State.QUEUED or (
        state == State.SUBMITTING and (force or changed is None or changed < stale_before))


def jobs_submit_batch(*, job_ids=(), cluster_id=None, force=False, retry_ids=(), claimed_at=None, others=True,
                      hold=False, limit=None):
    """Claim and submit a batch (see the module docstring): `job_ids` (taken
    while queued; while `submitting` only with `force` or once stale), a
    retry's `retry_ids` of the claim made at `claimed_at`, and, with
    `others`, the cluster's other queued (and stale) jobs up to `limit`
    (default BATCH_MAX) in all.
    `hold` submits the asked-for jobs held. Returns a BatchOutcome; raises
    BackendUnavailable (with `.job_ids` and `.claimed_at` for the retry) when
    jobs were left `submitting` because the cluster did not answer."""
    cluster_id, jobs, may_exist, now = _claim(
        job_ids=job_ids, force=force, retry_ids=retry_ids, claimed_at=claimed_at, cluster_id=cluster_id,
        others=others, limit=limit or BATCH_MAX)
    outcome = BatchOutcome(claimed_at=now, cluster_id=cluster_id)
    if not jobs:
        return outcome
    results = {}  # pk -> scheduler id | BackendError
    try:
        cluster = SlurmCluster.objects.get(pk=cluster_id)
        client = cluster_services.slurm_client(cluster)
        sudo = cluster.sudo_mode == SlurmCluster.SudoMode.SUDO
        todo = jobs
        if may_exist:
            names = {j.slurm_name: j for j in jobs if j.pk in may_exist}
            try:
                found = client.find_jobs_by_name(list(names))
            except BackendError as exc:  # cannot tell: never submit blind
                raise BackendUnavailable(f"cannot look up jobs that may be submitted already: {exc}") from exc
            for name, ids in found.items():
                if ids:
                    log.info("job %s was already submitted as %s: adopting it", names[name].pk, ids[0])
                    results[names[name].pk] = ids[0]
            todo = [j for j in jobs if j.pk not in results]
        for workdir, user in sorted({(j.workdir, j.posix_user if sudo else None) for j in todo}):
            try:
                _ensure_workdir(client, cluster, workdir, user)
            except CommandFailed as exc:
                for job in todo:
                    if job.workdir == workdir:
                        results[job.pk] = exc
        todo = [j for j in todo if j.pk not in results]
        if todo:
            wanted = set(job_ids) if hold else set()
            items = [(str(j.pk), _submit_request(j, hold=j.pk in wanted), j.posix_user if sudo else None)
                     for j in todo]
            for key, value in client.submit_many(items, lanes=cluster.submit_lanes).items():
                results[int(key)] = value
    except BackendUnavailable as exc:
        for job in jobs:  # the exec did not answer at all: nothing is known
            results.setdefault(job.pk, exc)
    _record(jobs, results, outcome)
    if outcome.unknown:
        error = next((r for pk, r in results.items() if pk in outcome.unknown), "the node did not report")
        exc = BackendUnavailable(str(error))
        exc.job_ids, exc.claimed_at = list(outcome.unknown), now
        raise exc
    return outcome


def _record(jobs, results, outcome):
    """Write each job's result: submitted ones in one UPDATE, each refusal
    with its quota release; unknown ones stay `submitting`."""
    done, refused = {}, {}
    for job in jobs:
        result = results.get(job.pk)
        if isinstance(result, str):
            done[job.pk] = result
        elif isinstance(result, BackendError) and not isinstance(result, BackendUnavailable):
            refused[job.pk] = result
        else:
            outcome.unknown.append(job.pk)
    if not (done or refused):
        return
    now = timezone.now()
    with transaction.atomic():
        still = set(Job.objects.select_for_update(of=("self",)).filter(
            pk__in=list(done) + list(refused), state=State.SUBMITTING).values_list("pk", flat=True))
        submitted = [job for job in jobs if job.pk in done and job.pk in still]
        for job in submitted:  # checked against the state machine, written in ONE UPDATE
            job.transition("submitted", save=False, scheduler_id=done[job.pk], submitted_at=now,
                           scheduler_state="PENDING", reason="")
            outcome.submitted.append(job.pk)
        if submitted:
            # CASE id WHEN .. THEN .. END written out: Django's Case/When
            # takes ~2 ms per job to compile, this takes nothing.
            case = (f"CASE {connection.ops.quote_name(Job._meta.pk.column)} "
                    + " ".join(["WHEN %s THEN %s"] * len(submitted)) + " END")
            Job.objects.filter(pk__in=[j.pk for j in submitted]).update(
                state=State.PENDING, state_changed=now, submitted_at=now, scheduler_state="PENDING", reason="",
                scheduler_id=RawSQL(case, [v for j in submitted for v in (j.pk, j.scheduler_id)],
                                    output_field=CharField()))
        for job in Job.objects.select_related("project", "owner").filter(pk__in=[pk for pk in refused if pk in still]):
            job.transition("submit_failed", reason=f"The cluster refused the job: {refused[job.pk]}"[:500],
                           ended_at=now)
            settle_quota(job, actual=0)
            outcome.failed.append(job.pk)


def jobs_submit_all(*, cluster_id, job_ids=(), force=False, retry_ids=(), claimed_at=None, hold=False):
    """Submit the cluster's waiting jobs as its submission stream (see the
    module docstring): take the stream, run batches (the first with these
    arguments, then the rest of the queue) until a claim finds nothing,
    let go, and look once more for jobs that came meanwhile. If another
    worker has the stream, return at once: it takes our jobs too. Only an
    explicit call (`force`, a claim's retry) goes on without the stream.
    Returns the combined BatchOutcome; a batch that leaves jobs `submitting`
    raises (see jobs_submit_batch), after letting go of the stream."""
    total = BatchOutcome(cluster_id=cluster_id)
    explicit = force or bool(retry_ids)
    first = dict(job_ids=job_ids, force=force, retry_ids=retry_ids, claimed_at=claimed_at, hold=hold)
    idle = 0  # looks in a row that found queued jobs but could claim none
    while True:
        streaming = _stream_take(cluster_id)
        if not streaming and not explicit:
            return total
        claimed = 0
        try:
            while True:
                outcome = jobs_submit_batch(cluster_id=cluster_id, **first)
                first = {}
                total.claimed_at = total.claimed_at or outcome.claimed_at
                total.submitted += outcome.submitted
                total.failed += outcome.failed
                claimed += len(outcome.claimed)
                if not outcome.claimed:
                    break
        finally:
            if streaming:
                _stream_release(cluster_id)
        if not streaming:
            return total
        # A job whose message found the stream taken just before we let go
        # is ours: look again. One still row-locked (by the transaction that
        # creates a job riding with it, or a cancel) is free a moment later.
        if not Job.objects.filter(cluster_id=cluster_id, state=State.QUEUED).exists():
            return total
        idle = 0 if claimed else idle + 1
        if idle > STREAM_IDLE_LOOKS:
            return total  # held for long by someone: the periodic sync takes it
        if idle:
            time.sleep(0.01)


def job_submit_message(*, job_id, hold=False, retry_ids=(), claimed_at=None):
    """What tasks.submit_job does: if the job still waits (or this is the
    retry of a claim), submit it and everything else waiting on its cluster
    (jobs_submit_all). A job taken by another batch already, or a cluster
    whose stream another worker has, costs a read or two."""
    row = Job.objects.filter(pk=job_id).values_list("state", "state_changed", "cluster_id").first()
    if row is None:
        return BatchOutcome()
    state, changed, cluster_id = row
    if not retry_ids and not _may_take(state, changed, timezone.now() - STALE_AFTER):
        return BatchOutcome(cluster_id=cluster_id)
    return jobs_submit_all(cluster_id=cluster_id, job_ids=[job_id], hold=hold, retry_ids=retry_ids,
                           claimed_at=claimed_at)


# One submission stream per cluster: a PostgreSQL advisory lock (held by the
# worker's database session, so a dead worker lets go of it). Elsewhere
# every worker submits (correct as well, batches are only smaller).
STREAM_LOCK = 0x4E455048 << 32  # "NEPH", + the cluster id
STREAM_IDLE_LOOKS = 200  # x 10 ms


def _stream_take(cluster_id):
    if connection.vendor != "postgresql":
        return True
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [STREAM_LOCK + int(cluster_id)])
        return cursor.fetchone()[0]


def _stream_release(cluster_id):
    if connection.vendor != "postgresql":
        return
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [STREAM_LOCK + int(cluster_id)])
    except DatabaseError:  # the session is gone, and its lock with it
        log.warning("could not release the submission stream of cluster %s", cluster_id, exc_info=True)


def job_submit(*, job_id, hold=False):
    """Submit this job now, exactly once: a queued job, or one left
    `submitting` by a worker that died (its Slurm name is looked up first
    and a job found is adopted); the cluster's other queued jobs go along.
    Only for a job no other worker is submitting right now (messages go
    through job_submit_message)."""
    cluster_id = Job.objects.values_list("cluster_id", flat=True).get(pk=job_id)
    try:
        jobs_submit_all(cluster_id=cluster_id, job_ids=[job_id], force=True, hold=hold)
    except BackendUnavailable as exc:
        if job_id not in getattr(exc, "job_ids", [job_id]):
            return Job.objects.get(pk=job_id)  # ours went through, others wait for the sync
        raise
    return Job.objects.get(pk=job_id)


# cluster id -> (pk, monotonic time) of the newest job this process sent a
# Celery message for.
_messages_sent = {}


def message_sent(job):
    """Called once `job`'s message is handed to the broker."""
    _messages_sent[job.cluster_id] = (job.pk, time.monotonic())


def batch_anchor(job):
    """Inside the transaction that creates `job`: the newest job this
    process sent a message for, if it is still queued (so its message has
    not claimed it yet), at most ANCHOR_WINDOW old, and nobody holds it;
    locked until the commit. Else None: then `job` needs a message of its
    own. See the module docstring."""
    pk, sent = _messages_sent.get(job.cluster_id, (None, 0.0))
    if (pk is None or time.monotonic() - sent > ANCHOR_WINDOW.total_seconds()
            or not connection.features.has_select_for_update_skip_locked):
        return None
    # By primary key alone, so the planner can only take that index (with
    # the state in the WHERE it may scan the cluster's queued jobs instead);
    # the conditions are read with the lock. A row we lock but cannot use
    # stays locked until our commit, a few milliseconds.
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT state = %s AND cluster_id = %s AND state_changed >= %s FROM {Job._meta.db_table} "
            "WHERE id = %s FOR UPDATE SKIP LOCKED",
            [State.QUEUED, job.cluster_id, timezone.now() - ANCHOR_WINDOW, pk])
        row = cursor.fetchone()
    return pk if row and row[0] else None


def jobs_submit_pending(*, cluster):
    """The periodic safety net: submit the cluster's jobs whose message was
    lost (queued for over QUEUED_TOO_LONG) or whose worker died mid-submission
    (`submitting` for over STALE_AFTER). Returns the number claimed."""
    now = timezone.now()
    waiting = Job.objects.filter(cluster=cluster).filter(
        Q(state=State.QUEUED, state_changed__lt=now - QUEUED_TOO_LONG)
        | Q(state=State.SUBMITTING, state_changed__lt=now - STALE_AFTER))
    if not waiting.exists():
        return 0
    try:
        outcome = jobs_submit_all(cluster_id=cluster.pk)  # a worker holding the stream takes them anyway
    except BackendUnavailable as exc:
        log.warning("submitting the waiting jobs of %s failed: %s", cluster, exc)
        return len(getattr(exc, "job_ids", []))
    return len(outcome.claimed)


_workdirs_made = set()


def _ensure_workdir(client, cluster, workdir, user):
    """Create $PREFIX/$USER once per process and cluster, not per job:
    private (0700, `user` let in by an ACL; None in service mode) or shared
    (1777), as the cluster says."""
    key = (cluster.pk, cluster.user_dirs, workdir, user)
    if key not in _workdirs_made:
        if cluster.user_dirs == cluster.UserDirs.SHARED:
            client.ensure_dir(workdir)
        else:
            client.ensure_private_dir(workdir, user)
        _workdirs_made.add(key)


def job_give_up_submission(*, job_id, error, claimed_at=None):
    """The worker ran out of retries: no command node answered. With
    `claimed_at`, only while the job still belongs to that claim."""
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job_id)
        if job.state == State.SUBMITTING and not job.scheduler_id and (
                claimed_at is None or job.state_changed == claimed_at):
            job.transition("submit_failed", reason=f"No command node of {job.cluster} answered: {error}"[:500],
                           ended_at=timezone.now())
            settle_quota(job, actual=0)


def settle_quota(job, *, actual):
    """Give back the core-hours `job` reserved and charge `actual` instead
    (0 when it never ran); the caller holds the job's row lock. Shared with
    jobs.sync, which settles the jobs that end on the cluster."""
    if job.reserved_core_hours or actual:
        project_services.quota_settle(project=job.project, user=job.owner, resource=Resource.CORE_HOURS,
                                      reserved=job.reserved_core_hours, actual=actual)
    job.reserved_core_hours = 0
    job.save(update_fields=["reserved_core_hours"])
