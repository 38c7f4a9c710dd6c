"""Batch job rules, in three modules, all importable from here:

- jobs.composition: compose and validate (templates, partitions, quota),
  reserve core-hours, save as `queued`, clone;
- jobs.submission: submit exactly once, in batches (one SSH exec for many
  jobs), retry, give up;
- jobs.sync: follow jobs on the cluster, cancel, read their output.

Submission is idempotent: a job is marked `submitting` and committed before
sbatch runs, and the Slurm job carries the portal id in its name, so a
retried or restarted worker first looks the name up and adopts a job it
already made instead of submitting it again (see jobs.submission).
"""
from .composition import (  # noqa: F401
    DEFAULT_TIME_LIMIT,
    ENV_NAME,
    PARAM,
    core_hours_by_member,
    default_time_limit,
    job_clone,
    job_create,
    job_partitions,
    job_prepare,
    template_render,
    template_save_from_job,
    templates_visible_to,
)
from .submission import (  # noqa: F401
    BATCH_MAX,
    STALE_AFTER,
    BatchOutcome,
    batch_anchor,
    job_give_up_submission,
    job_submit,
    job_submit_message,
    jobs_submit_all,
    jobs_submit_batch,
    jobs_submit_pending,
    message_sent,
)
from .sync import FINAL_SLURM, LOST_AFTER, SLURM_TRANSITIONS, job_cancel, job_output, jobs_sync  # noqa: F401
