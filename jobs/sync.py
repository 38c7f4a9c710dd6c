"""Following submitted jobs on their cluster (one squeue call per cluster,
sacct for those that left the queue), cancelling them, and reading their
output."""
import math
import re
from datetime import timedelta

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from clusters import services as cluster_services
from clusters.backends.base import RemoteFileMissing
from clusters.models import SlurmCluster

from .models import ACTIVE, ON_CLUSTER, Job, State
from .submission import settle_quota

# Seconds a job may be missing from both squeue and sacct before it is lost.
LOST_AFTER = timedelta(minutes=10)

# Slurm's state names -> the transition that records them.
SLURM_TRANSITIONS = {
    "PENDING": "mark_pending", "REQUEUED": "mark_pending", "REQUEUE_HOLD": "mark_pending",
    "REQUEUE_FED": "mark_pending", "SUSPENDED": "mark_running", "CONFIGURING": "mark_running",
    "RUNNING": "mark_running", "RESIZING": "mark_running", "SIGNALING": "mark_running",
    "STAGE_OUT": "mark_completing", "COMPLETING": "mark_completing",
    "COMPLETED": "finish_completed", "FAILED": "finish_failed", "BOOT_FAIL": "finish_failed",
    "DEADLINE": "finish_failed", "PREEMPTED": "finish_failed", "REVOKED": "finish_failed",
    "SPECIAL_EXIT": "finish_failed", "CANCELLED": "finish_cancelled", "TIMEOUT": "finish_timeout",
    "OUT_OF_MEMORY": "finish_out_of_memory", "NODE_FAIL": "finish_node_fail",
}
FINAL_SLURM = {s for s, t in SLURM_TRANSITIONS.items() if t.startswith("finish_")}


def _aggregate(entries):
    """One job's state from its rows (several for an array): the most
    'alive' state wins; a finished array is failed if any task failed."""
    states = [e.state for e in entries]
    counts = {}
    for s in states:
        counts[s] = counts.get(s, 0) + 1
    for alive in ("RUNNING", "CONFIGURING", "COMPLETING", "PENDING", "REQUEUED", "SUSPENDED"):
        if alive in counts:
            return alive, counts
    if all(s == "COMPLETED" for s in states):
        return "COMPLETED", counts
    for bad in ("OUT_OF_MEMORY", "TIMEOUT", "NODE_FAIL", "FAILED", "CANCELLED"):
        if bad in counts:
            return bad, counts
    return states[0], counts


def _rows_for(job, rows):
    sid = job.scheduler_id
    return [r for r in rows.values() if r.job_id == sid or getattr(r, "array_job_id", "") == sid]


def jobs_sync(*, cluster):
    """Follow every active job of `cluster`: one squeue call for all of them,
    one sacct call for those that left the queue."""
    jobs = list(Job.objects.filter(cluster=cluster, state__in=ON_CLUSTER).exclude(scheduler_id=""))
    if not jobs:
        return {"checked": 0}
    client = cluster_services.slurm_client(cluster)
    queue = client.queue([j.scheduler_id for j in jobs])
    gone = []
    for job in jobs:
        rows = _rows_for(job, queue)
        state, counts = _aggregate(rows) if rows else (None, {})
        if rows and state not in FINAL_SLURM:
            reason = next((r.reason for r in rows if r.reason and r.reason not in ("None", "(null)")), "")
            start = min((r.start for r in rows if r.start), default=None)
            _apply(job, state, counts=counts if job.array else {}, reason=reason, started_at=start)
        else:
            gone.append(job)  # left the queue, or finished: sacct has the exit code and times
    if gone:
        acct = client.accounting([j.scheduler_id for j in gone])
        for job in gone:
            rows = _rows_for(job, acct)
            if rows:
                _apply_accounting(job, rows)
            elif job.state_changed and timezone.now() - job.state_changed > LOST_AFTER:
                _finish(job, "mark_lost", reason="Slurm no longer knows this job.")
    return {"checked": len(jobs), "left_queue": len(gone)}


def _apply(job, slurm_state, *, counts, reason="", started_at=None):
    transition = SLURM_TRANSITIONS.get(slurm_state)
    fields = {"scheduler_state": slurm_state, "array_tasks": counts, "reason": reason[:500]}
    if started_at and not job.started_at:
        fields["started_at"] = started_at
    if transition is None or transition.startswith("finish_") or not job.can(transition):
        # Final states are recorded from sacct (exit code, times, CPU time).
        _save_fields(job, fields)
        return
    if job.state == Job.machine.transitions[transition][1]:
        _save_fields(job, fields)
    else:
        with transaction.atomic():
            locked = Job.objects.select_for_update().get(pk=job.pk)
            if locked.can(transition):
                locked.transition(transition, **fields)


def _save_fields(job, fields):
    changed = {k: v for k, v in fields.items() if getattr(job, k) != v}
    if changed:
        Job.objects.filter(pk=job.pk).update(**changed)


def _apply_accounting(job, rows):
    state, counts = _aggregate(rows)
    if job.array and len(rows) < job.task_count:
        # sacct lists an array's task rows one by one: wait for all of them.
        _save_fields(job, {"array_tasks": counts})
        return
    if state not in FINAL_SLURM:
        _apply(job, state, counts=counts if job.array else {})
        return
    exit_codes = [r.exit_code for r in rows if r.exit_code is not None]
    cpu_seconds = sum(r.cpu_time_raw for r in rows)
    starts = [r.start for r in rows if r.start]
    ends = [r.end for r in rows if r.end]
    reason = {
        "FAILED": "The job exited with an error.", "TIMEOUT": "The job reached its time limit.",
        "OUT_OF_MEMORY": "The job ran out of memory.", "NODE_FAIL": "A node of the job failed.",
        "CANCELLED": "The job was cancelled.",
    }.get(state, "")
    _finish(job, SLURM_TRANSITIONS[state], scheduler_state=state, array_tasks=counts if job.array else {},
            exit_code=max(exit_codes) if exit_codes else None, reason=reason,
            started_at=min(starts) if starts else job.started_at, ended_at=max(ends) if ends else timezone.now(),
            used_core_hours=round(cpu_seconds / 3600, 4))


def _finish(job, transition, **fields):
    with transaction.atomic():
        locked = Job.objects.select_for_update().select_related("project", "owner").get(pk=job.pk)
        if not locked.can(transition):
            return
        fields.setdefault("ended_at", timezone.now())
        locked.transition(transition, **fields)
        settle_quota(locked, actual=math.ceil(locked.used_core_hours or 0))


# --- Cancel and output --------------------------------------------------------------


def job_cancel(*, job, actor):
    """Cancel a job: at once if it never reached the cluster, else scancel
    (as its owner in sudo mode) and record it."""
    with transaction.atomic():
        locked = Job.objects.select_for_update().get(pk=job.pk)
        if locked.state in (State.DRAFT, State.QUEUED):
            locked.transition("finish_cancelled", reason=f"Cancelled by {actor} before submission.",
                              ended_at=timezone.now())
            settle_quota(locked, actual=0)
            return locked
        if locked.state == State.SUBMITTING:
            raise ValidationError("The job is being submitted right now; try again in a moment.")
        if locked.state not in ACTIVE:
            raise ValidationError(f"The job is already {locked.get_state_display().lower()}.")
    client = cluster_services.slurm_client(job.cluster)
    as_user = job.posix_user if job.cluster.sudo_mode == SlurmCluster.SudoMode.SUDO else None
    client.cancel(job.scheduler_id, as_user=as_user)
    # Charge the time it ran; sacct's exact figure comes with accounting.
    used = 0.0
    if job.started_at:
        used = (timezone.now() - job.started_at).total_seconds() * job.cpus * job.nodes / 3600
    _finish(job, "finish_cancelled", scheduler_state="CANCELLED", reason=f"Cancelled by {actor}.",
            used_core_hours=round(used, 4))
    job.refresh_from_db()
    return job


def job_output(*, job, stream, max_bytes=64 * 1024, task=None):
    """The last `max_bytes` of the job's stdout or stderr (SFTP); for an
    array, of one task's (default: the first)."""
    if stream not in ("stdout", "stderr"):
        raise ValidationError({"stream": "Choose stdout or stderr."})
    if not job.scheduler_id:
        return b""
    path = job.output_path if stream == "stdout" else job.error_path
    if "%a" in path:
        first = int(re.match(r"\d+", job.array).group()) if job.array else 0
        path = path.replace("%a", str(first if task is None else int(task)))
    client = cluster_services.slurm_client(job.cluster)
    try:
        return client.tail(path, max_bytes)
    except RemoteFileMissing:
        return b""
