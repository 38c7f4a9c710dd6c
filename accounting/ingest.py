"""Bulk ingest of Slurm accounting (sacct) into UsageRecord, and the daily rollup.

Input: the lines of `SlurmClient.accounting_window` -- `sacct -a --parsable2
--noheader --delimiter=SEP` with FIELDS, times as epoch seconds (ISO times
are accepted too and taken as UTC), steps included. Allocation rows ('123',
'123_4') become records; step rows ('123.batch', '123_4.0', '123.extern')
only contribute their MaxRSS (the largest over a job's steps). Rows of jobs
not finished yet (no End, or an active state) are skipped, not counted as
malformed. Malformed lines are counted and the first few logged; they never
abort the batch.

A batch goes in in one transaction, serialized per cluster by an advisory
lock, as a pipeline: this thread parses while a loader thread has
PostgreSQL load what was parsed before.
  1. The mappings are read once: POSIX name -> portal user (PosixAccount of
     the cluster), Slurm account -> project (ClusterAccount of the cluster,
     else the project whose slug is the account and which has no mapping on
     the cluster). A job whose user or project is unknown is kept, with
     `unmapped` set.
  2. The lines are parsed in blocks (a chunk each, ~40k lines) into rows with
     the final column values, written at once in COPY's binary format, except
     the rows whose job name names a portal job (nephele-<pk>-<hex>) when the
     cluster has more portal jobs than a quarter of the lines: those wait for
     the loader's look-up of the jobs each chunk names. With fewer (none, in a
     backfill of the time before the portal), they are read once up front and
     the parser matches the names.
  3. For each chunk the loader looks up, in one round trip, whether one of a
     sample of its job ids is stored, the portal jobs named, and the largest
     record id; then
     - a chunk of new records (the usual case) is COPYed straight into
       accounting_usagerecord, in a savepoint: a stored id the sample missed
       makes the COPY fail on the unique index, and the chunk takes the next
       way;
     - any other chunk is COPYed into a staging table and merged: one look-up
       of each row by the unique key, UPDATE of the rows whose values differ
       (IS DISTINCT FROM), INSERT of the ids not stored. Re-ingesting a window
       therefore writes nothing, not even `updated`.
  4. DailyUsage is rebuilt for the (cluster, day) pairs whose records were
     inserted or changed (old and new day of a moved job): delete those days,
     insert one GROUP BY over the records of those days. The day is the UTC
     date of a job's end; all of its usage counts there. In the first batch of
     a cluster (a backfill: no record before it), the loader takes the sums
     of each chunk's records (by id) while the parser works, and writes the
     rollup of a day as soon as a chunk without it comes; days that come back,
     or that a merged chunk touched, are rebuilt from the records at the end.
     Sums are over integers (CPU seconds, GPU seconds, jobs), so the amounts
     are exactly those of the full rebuild.
"""
import gc
import logging
import math
import queue
import re
import sys
import threading
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone as dt_timezone
from operator import itemgetter

import psycopg
from psycopg.copy import Writer
from django.db import connection, transaction
from django.utils import timezone

from clusters.backends.slurm import SEP

from .models import IngestWatermark

log = logging.getLogger(__name__)

FIELDS = ("JobID", "JobName", "User", "Account", "Partition", "State", "ExitCode", "AllocCPUS", "AllocTRES",
          "ElapsedRaw", "CPUTimeRAW", "ReqMem", "Submit", "Start", "End", "MaxRSS")
NFIELDS = len(FIELDS)
LOG_SAMPLES = 5  # malformed lines quoted in the log per batch
ADVISORY_LOCK = 0x6E65  # first key of pg_advisory_xact_lock(key, cluster_id)

# 123; 123_4 (array task); 123_[5-9] (array tasks cancelled before they ran: one row); 123+1 (het job)
ALLOCATION_ID = re.compile(r"^[0-9]{1,18}(?:_[0-9]{1,9}|_\[[0-9,:%-]{1,200}\]|\+[0-9]{1,9})?$")
STEP_ID = re.compile(r"^([0-9]{1,18}(?:_[0-9]{1,9}|_\[[0-9,:%-]{1,200}\]|\+[0-9]{1,9})?)\.[A-Za-z0-9_+-]{1,64}$")
PORTAL_NAME = re.compile(r"^nephele-([0-9]{1,18})-([0-9a-f]{12})$")
ACTIVE_STATES = frozenset({"PENDING", "RUNNING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
                           "RESIZING", "SIGNALING", "STAGE_OUT", "COMPLETING", "CONFIGURING"})
NO_TIME = frozenset({"", "Unknown", "None", "N/A", "NONE", "(null)", "0"})
MEM_FACTOR = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 ** 2, "P": 1024 ** 3}
INT32 = 2 ** 31 - 1
MAX_EPOCH = 10 ** 11  # year 5138: anything later is garbage (and out of range for timestamptz)
DAY = 86400
EPOCH_DAY = date(1970, 1, 1)

# What a parsed row holds, in COPY order, with the type it is sent as in
# COPY's binary format (times: int8 microseconds since 2000-01-01, which is
# timestamptz's binary form). MaxRSS is only known once the steps after an
# allocation have passed, the portal job (when the loader looks it up) later:
# both last.
COLUMNS = (
    ("cluster_id", "int8"), ("job_id", "text"), ("job_name", "text"), ("posix_user", "text"), ("account", "text"),
    ("partition", "text"), ("state", "text"), ("exit_code", "int4"), ("exit_signal", "int4"),
    ("alloc_cpus", "int4"), ("alloc_gpus", "int4"), ("elapsed_seconds", "int8"), ("cpu_seconds", "int8"),
    ("req_mem_mb", "int8"), ("submit", "int8"), ("start", "int8"), ("end", "int8"),
    ("user_id", "int8"), ("project_id", "int8"), ("unmapped", "bool"), ("ingested", "int8"), ("updated", "int8"),
    ("max_rss_mb", "int8"), ("portal_job_id", "int8"),
)
COPY_TYPES = [kind for _, kind in COLUMNS]
RSS = len(COLUMNS) - 2  # index of max_rss_mb in a row
COPY_COLUMNS = ", ".join(f'"{name}"' for name, _ in COLUMNS)
# Compared to decide whether a stored record changed.
COMPARED = ("job_name", "posix_user", "account", "partition", "state", "exit_code", "exit_signal", "alloc_cpus",
            "alloc_gpus", "elapsed_seconds", "cpu_seconds", "req_mem_mb", "max_rss_mb", "submit", "start", "end",
            "user_id", "project_id", "portal_job_id", "unmapped")

CHUNK_LINES = 40960  # lines per chunk at first (about 32k records, 5 MB in the staging table: temp_buffers is 8 MB)
SAMPLE_EVERY = 256  # one id in this many of a chunk is looked up before the chunk is COPYed as new
SWITCH_INTERVAL = 0.0005  # s: how soon the loader thread gets the GIL back after each round trip
MAX_SAVEPOINTS = 48  # chunks COPYed as new per batch (a subtransaction each; a backend caches 64)


class Malformed(ValueError):
    pass


class _Orphan(Exception):
    """A step row turned up after its allocation was already emitted (sacct
    prints steps right after their job; only hand-made input does this)."""


@dataclass
class IngestResult:
    lines: int = 0
    records: int = 0  # allocation records in the batch
    inserted: int = 0
    updated: int = 0
    malformed: int = 0
    skipped: int = 0
    days: list = field(default_factory=list)  # days whose rollup was rebuilt
    last_end: datetime | None = None  # the watermark after the batch

    @property
    def unchanged(self):
        return self.records - self.inserted - self.updated


# -- parsing --------------------------------------------------------------------------
#
# Lines become tuples of COLUMNS' values. The usual line (16 fields of ASCII
# text, SEP-delimited) is split and checked field by field with string
# methods, the fields with few distinct values (state, exit code, CPUs, TRES,
# memory) through per-batch caches; any other line (ISO times, the delimiter
# in a job name, '|' as delimiter, non-ASCII text, garbage) goes through the
# careful `_slow_row`, with the same outcome for what both take. Times are
# sent as microseconds since 2000-01-01, which is what a timestamptz is in
# COPY's binary format.

GPUS = re.compile(r"(?:^|,)gres/gpu=([0-9]{1,9})(?:,|$)")
EPOCH_2000 = 946684800  # timestamptz in binary COPY: microseconds since 2000-01-01 UTC
OFFSET_US = EPOCH_2000 * 1_000_000
MAX_MB = 2 ** 62  # a bigint
CACHE = 4096  # distinct values remembered per field and batch
_MISS = object()


def _epoch(value):
    if value.isdigit():
        n = int(value)
        if n == 0:
            return None
    elif value in NO_TIME:
        return None
    else:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise Malformed(f"bad time {value!r}") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt_timezone.utc)
        n = int(parsed.timestamp())
    if not 0 < n < MAX_EPOCH:
        raise Malformed(f"time out of range {value!r}")
    return n


def _us(epoch):
    return None if epoch is None else (epoch - EPOCH_2000) * 1_000_000


def _count(value, limit=INT32):
    if not value.isdigit():
        raise Malformed(f"not a count: {value!r}")
    n = int(value)
    if n > limit:
        raise Malformed(f"count out of range {value!r}")
    return n


def _memory_mb(value, cpus=0):
    """'24105M', '4G', '3956K', '4000Mc' (per CPU, old Slurm), '4000Mn' -> MB
    (rounded up), or None when empty/unparsable: memory never rejects a row."""
    if not value:
        return None
    per_cpu = False
    if value[-1] in "nc":
        per_cpu, value = value[-1] == "c", value[:-1]
    unit = value[-1:].upper()
    if unit in MEM_FACTOR:
        value = value[:-1]
    else:
        unit = "M"  # a bare number is MB
    try:
        number = float(value)
    except ValueError:
        return None
    if not 0 <= number < 1e12:
        return None
    mb = math.ceil(number * MEM_FACTOR[unit])
    if per_cpu:
        mb *= max(cpus, 1)
    return mb if mb < MAX_MB else None


def _rss_mb(value):
    """_memory_mb for MaxRSS, with a shortcut for sacct's usual '3956K'."""
    if value[-1:] == "K" and 1 < len(value) < 14 and value[:-1].isdigit():
        return -(-int(value[:-1]) // 1024)  # == ceil(n / 1024), exactly as _memory_mb
    return _memory_mb(value)


def _gpus(tres):
    """GPUs in AllocTRES ('billing=4,cpu=4,gres/gpu=2,gres/gpu:a100=2,node=1'):
    the untyped gres/gpu count, else the sum of the typed ones."""
    if "gres/gpu" not in tres:
        return 0
    if tres.count("gres/gpu") == 1:  # the usual 'gres/gpu=2' alone
        m = GPUS.search(tres)
        if m is not None:
            return int(m.group(1))
    total, typed = None, 0
    for item in tres.split(","):
        key, _, count = item.partition("=")
        if key == "gres/gpu":
            total = _count(count)
        elif key.startswith("gres/gpu:"):
            typed += _count(count)
    return total if total is not None else min(typed, INT32)


def _text(value):
    """Text as PostgreSQL takes it: no NUL, valid UTF-8."""
    if "\x00" in value:
        raise Malformed("NUL byte")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value


def _exit(value):
    """ExitCode 'code:signal' -> (code, signal); (None, None) when empty."""
    if not value:
        return None, None
    a, colon, b = value.partition(":")
    if not colon:
        raise Malformed(f"bad exit code {value!r}")
    return _count(a, 1 << 16), _count(b, 1 << 16)


def _fields(line, sep):
    f = line.split(sep)
    if len(f) != NFIELDS:
        if len(f) < NFIELDS:
            raise Malformed(f"{len(f)} fields, not {NFIELDS}")
        extra = len(f) - NFIELDS  # the delimiter inside JobName (no other field can hold it)
        f = [f[0], sep.join(f[1:2 + extra])] + f[2 + extra:]
    return f


def _slow_row(f, users, projects, cluster_id, now_us):
    """Fields of an allocation line -> (the row without MaxRSS and portal
    job, the row's own MaxRSS in MB or None, the end epoch, the (pk, hex) of
    a portal job name or None); or Nones for a job not finished; Malformed when
    it makes no sense."""
    job_id = f[0]
    if ALLOCATION_ID.match(job_id) is None:
        raise Malformed(f"bad job id {job_id!r}")
    state = f[5].strip().split(" ", 1)[0]
    end = _epoch(f[14].strip())
    if end is None or state in ACTIVE_STATES:
        return None, None, None, None
    cpus = _count(f[7].strip())
    code, signal = _exit(f[6])
    name = f[1]
    m = PORTAL_NAME.match(name)
    user, project = users.get(f[2]), projects.get(f[3])
    return (
        cluster_id, job_id, _text(name), _text(f[2]), _text(f[3]), _text(f[4]), _text(state), code, signal, cpus,
        _gpus(f[8]), _count(f[9], 1 << 50), _count(f[10], 1 << 50), _memory_mb(f[11].strip(), cpus),
        _us(_epoch(f[12].strip())), _us(_epoch(f[13].strip())), _us(end),
        user, project, user is None or project is None, now_us, now_us,
    ), _memory_mb(f[15].strip()), end, (int(m.group(1)), m.group(2)) if m else None


@dataclass
class Chunk:
    """Up to a block's records, and what the loader needs to know about them."""

    data: bytes  # records in COPY's binary format (signature, no trailer), or b""
    rows: list  # more records, as tuples of COLUMNS' values: the ones naming a portal job (or all: see repeat)
    portal: list  # (index in rows, pk, hex) of the rows whose job name is a portal job's
    repeat: bool  # a job id seen before in this batch (in this chunk or an earlier one): all in rows, in order
    days: set  # epoch days (end // 86400) of its records
    sample: list  # some of its job ids
    records: int


@dataclass
class Batch:
    """What a stream of lines contained (filled in by `parse`)."""

    lines: int = 0
    records: int = 0
    malformed: int = 0
    skipped: int = 0  # unfinished jobs
    samples: list = field(default_factory=list)
    max_end: int | None = None
    orphan_rss: dict = field(default_factory=dict)  # MaxRSS of steps not right after their allocation


def detect_sep(lines):
    return next((SEP if SEP in line else "|" for line in lines[:50] if line.strip()), SEP)


def parse(lines, batch, *, users=None, projects=None, cluster_id=0, now=None, sep=None, orphan_rss=None,
          dry=False, chunk_lines=None, cursor=None, jobs=None):
    """Yield Chunks of rows for `lines` (a list), one row per job allocation,
    with the user and project ids of `users` (POSIX name -> id) and
    `projects` (Slurm account -> id); counts go to `batch`.

    Steps fold their MaxRSS into the allocation they follow (sacct prints them
    right after it). A step before its allocation is kept for it; one after
    its allocation was emitted raises _Orphan -- `ingest_lines` then parses
    again with `dry` (which collects every such step in batch.orphan_rss and
    yields nothing) and with `orphan_rss` given, which folds those into their
    allocations and ignores the stray steps.

    Lines go in blocks of about `chunk_lines`, a chunk each; a block never
    starts with a step. With a `cursor` (of the connection that will load
    them, not used), the records that need nothing more from the database go
    in COPY's binary format already (Chunk.data). A job name that names a
    portal job (nephele-<pk>-<hex>) is matched with `jobs` ({pk: hex} of the
    cluster's portal jobs) when given, else left to the loader (Chunk.portal).
    """
    if not isinstance(lines, (list, tuple)):
        lines = list(lines)
    if sep is None:
        sep = detect_sep(lines)
    parser = _Parser(batch, users or {}, projects or {}, cluster_id, _now_us(now), sep, orphan_rss, dry, jobs)
    binary = _Binary(cursor) if cursor is not None else None
    for i, j in _blocks(lines, sep, chunk_lines):
        chunk = parser.block(lines[i:j], binary)
        if chunk is not None:
            yield chunk
    batch.lines, batch.malformed, batch.skipped = len(lines) - parser.blank, parser.malformed, parser.skipped
    batch.records = len(parser.seen)
    batch.max_end = parser.max_end or None


def _blocks(lines, sep, chunk_lines=None):
    """(start, end) of the blocks of `lines`: about chunk_lines (CHUNK_LINES)
    each, more in a long batch, never starting with a step or an empty line, so
    that a job's steps are in the block of its allocation. A long batch starts
    and ends with smaller blocks: the loader starts sooner, and has less left
    to do once the parser is done (each of the last blocks is at most half of
    what is left)."""
    chunk_lines = chunk_lines or CHUNK_LINES
    n, i, k = len(lines), 0, 0
    ramp = n >= 4 * chunk_lines
    small = chunk_lines // 8
    while i < n:
        size = chunk_lines << (k // 24)  # fewer, larger chunks in a long batch (MAX_SAVEPOINTS)
        if ramp:
            size = max(min(size >> max(3 - k, 0), (n - i) // 2), small)
        j = min(n, i + size)
        while j < n and ("." in lines[j].partition(sep)[0] or not lines[j].strip()):
            j += 1
        yield i, j
        i, k = j, k + 1


class _Parser:
    """The state of a parse across blocks; `block` parses one into a Chunk
    (or None when it holds no record)."""

    def __init__(self, batch, users, projects, cluster_id, now_us, sep, orphan_rss, dry, jobs=None):
        self.batch, self.users, self.projects = batch, users, projects
        self.jobs = jobs  # {pk: hex} of the cluster's portal jobs, or None: the loader looks them up
        self.cluster_id, self.now_us, self.sep = cluster_id, now_us, sep
        self.dry, self.orphan_rss = dry, orphan_rss
        self.stray = batch.orphan_rss if dry else {}  # dry: every stray step; else steps before their allocation
        self.given = orphan_rss or {}
        self.seen = set()
        self.pending_id = None  # the job id of the last allocation, until its steps have passed
        self.max_end = self.blank = self.malformed = self.skipped = 0
        # Values of the fields with few distinct values, checked once each.
        self.first_words, self.exits, self.counts, self.gpus, self.memory = {}, {}, {}, {}, {}

    def block(self, lines, binary=None):
        """With `binary` (a _Binary), the records that need nothing more go in
        COPY's binary format as soon as they are complete (Chunk.data)."""
        sep, seen, stray, given, dry, orphan_rss = self.sep, self.seen, self.stray, self.given, self.dry, \
            self.orphan_rss
        users, projects, cluster_id, now_us = self.users, self.projects, self.cluster_id, self.now_us
        uget, pget = users.get, projects.get
        alloc_match, step_match, portal_match = ALLOCATION_ID.match, STEP_ID.match, PORTAL_NAME.match
        jobs = self.jobs
        active = ACTIVE_STATES
        first_words, exits, counts, gpus, memory = self.first_words, self.exits, self.counts, self.gpus, self.memory
        fast = sep == SEP  # with '|' (sacct's default), a job name may hold the delimiter: every line goes slow
        rows, portal, portal_rows, days = [], [], [], set()  # rows: all, in order
        append = rows.append
        write = binary.writer() if binary is not None and not dry else None
        repeat = False
        pending = pending_portal = None  # the last allocation's row, until its steps have passed
        pending_id, max_end, last_day = self.pending_id, self.max_end, 0
        blank = malformed = skipped = 0
        samples = self.batch.samples
        for line in lines:
            f = line.split(sep)
            try:
                if len(f) == NFIELDS and fast and line.isascii() and "\x00" not in line:
                    # The usual line: fields checked in the order of _slow_row, with the same outcome.
                    (job_id, name, user, account, partition, state, code, cpus, tres, elapsed, cputime, reqmem,
                     submit, start, end, rss) = f
                    if rss and rss[-1] in "\r\n":  # the line's end
                        rss = rss.rstrip("\r\n")
                    if "." in job_id:  # a step: only its MaxRSS counts
                        step = step_match(job_id)
                        if step is None:
                            raise Malformed(f"bad step id {job_id!r}")
                        base = step.group(1)
                        if rss[-1:] == "K" and 1 < len(rss) < 14 and rss[:-1].isdigit():  # sacct's usual '3956K'
                            rss = -(-int(rss[:-1]) // 1024)  # == ceil(n / 1024), exactly as _memory_mb
                        else:
                            rss = _memory_mb(rss)
                    else:
                        step = None
                        if not (job_id.isdigit() and len(job_id) < 19) and alloc_match(job_id) is None:
                            raise Malformed(f"bad job id {job_id!r}")
                        if (first := first_words.get(state)) is None:
                            first = _first_word(state)
                            if len(first_words) < CACHE:
                                first_words[state] = first
                        plain = bool((end + submit + start + elapsed + cputime).isdigit()
                                     and end and submit and start and elapsed and cputime)
                        if plain:  # all epoch seconds and counts: checked as ints below
                            end, submit, start = int(end), int(submit), int(start)
                            if end >= MAX_EPOCH:
                                raise Malformed(f"time out of range {end}")
                        elif end.isdigit() and len(end) < 12:
                            end = int(end)
                        else:
                            end = _epoch(end.strip())
                        if not end or first in active:
                            skipped += 1
                            continue
                        if (n := counts.get(cpus)) is None:
                            n = _count(cpus.strip())
                            if len(counts) < CACHE:
                                counts[cpus] = n
                        if (exit_ := exits.get(code)) is None:
                            exit_ = _exit(code)
                            if len(exits) < CACHE:
                                exits[code] = exit_
                        if (n_gpus := gpus.get(tres)) is None:
                            n_gpus = _gpus(tres)
                            if len(gpus) < CACHE:
                                gpus[tres] = n_gpus
                        if plain:
                            elapsed, cputime = int(elapsed), int(cputime)
                            if submit >= MAX_EPOCH or start >= MAX_EPOCH:
                                raise Malformed(f"time out of range {max(submit, start)}")
                            if elapsed > 1 << 50 or cputime > 1 << 50:
                                raise Malformed(f"count out of range {max(elapsed, cputime)}")
                            submit = submit * 1_000_000 - OFFSET_US if submit else None
                            start = start * 1_000_000 - OFFSET_US if start else None
                        else:
                            elapsed = int(elapsed) if elapsed.isdigit() and len(elapsed) < 16 \
                                else _count(elapsed, 1 << 50)
                            cputime = int(cputime) if cputime.isdigit() and len(cputime) < 16 \
                                else _count(cputime, 1 << 50)
                            submit, start = _epoch_us(submit), _epoch_us(start)
                        if (mb := memory.get(reqmem, _MISS)) is _MISS:
                            mb = _memory_mb(reqmem.strip(), n)
                            if len(memory) < CACHE and not reqmem.endswith("c"):  # per CPU: depends on AllocCPUS
                                memory[reqmem] = mb
                        rss = _rss_mb(rss) if rss else None
                        if stray or given:
                            rss = _with_stray(rss, job_id, stray, given, dry)
                        user_id, project_id = uget(user), pget(account)
                        job_portal = portal_job = None
                        if name.startswith("nephele-") and (p := portal_match(name)) is not None:
                            if jobs is None:  # the loader looks it up
                                job_portal = (int(p.group(1)), p.group(2))
                            elif jobs and jobs.get(int(p.group(1))) == p.group(2):
                                portal_job = int(p.group(1))
                        row = (cluster_id, job_id, name, user, account, partition, first, exit_[0], exit_[1], n,
                               n_gpus, elapsed, cputime, mb, submit, start, end * 1_000_000 - OFFSET_US,
                               user_id, project_id, user_id is None or project_id is None, now_us, now_us, rss,
                               portal_job)
                else:
                    line = line.rstrip("\r\n")
                    if not line or line.isspace():
                        blank += 1
                        continue
                    job_id, found, rest = line.partition(sep)
                    if "." in job_id:  # a step: only its MaxRSS counts
                        if not found or rest.count(sep) < NFIELDS - 2:
                            raise Malformed(f"{line.count(sep) + 1} fields, not {NFIELDS}")
                        step = step_match(job_id)
                        if step is None:
                            raise Malformed(f"bad step id {job_id!r}")
                        base, rss = step.group(1), _rss_mb(line[line.rfind(sep) + 1:])
                    else:
                        step = None
                        f = _fields(line, sep)
                        row, rss, end, job_portal = _slow_row(f, users, projects, cluster_id, now_us)
                        if row is None:
                            skipped += 1
                            continue
                        portal_job = None
                        if job_portal is not None and jobs is not None:
                            if jobs.get(job_portal[0]) == job_portal[1]:
                                portal_job = job_portal[0]
                            job_portal = None
                        if stray or given:
                            rss = _with_stray(rss, job_id, stray, given, dry)
                        row += (rss, portal_job)
                if step is not None:
                    if rss is not None:
                        if base == pending_id and pending is not None:
                            if pending[RSS] is None or rss > pending[RSS]:
                                pending = pending[:RSS] + (rss, pending[-1])
                        elif orphan_rss is not None:
                            pass  # already in `given`
                        elif base in seen and not dry:
                            raise _Orphan(base)
                        elif rss > stray.get(base, -1):
                            stray[base] = rss
                    continue
                # an allocation: the one before it is complete (its steps have passed)
                if pending is not None:
                    append(pending)
                    if pending_portal is not None:
                        portal.append((len(portal_rows), *pending_portal))
                        portal_rows.append(pending)
                    elif write is not None:
                        write(pending)
                pending, pending_portal, pending_id = row, job_portal, job_id
                if job_id in seen:
                    repeat = True
                else:
                    seen.add(job_id)
                day = end // DAY
                if day != last_day:
                    days.add(day)
                    last_day = day
                if end > max_end:
                    max_end = end
            except (Malformed, ValueError, IndexError) as exc:
                malformed += 1
                if len(samples) < LOG_SAMPLES:
                    samples.append((line[:300], str(exc)))
        if pending is not None:
            append(pending)
            if pending_portal is not None:
                portal.append((len(portal_rows), *pending_portal))
                portal_rows.append(pending)
            elif write is not None:
                write(pending)
        self.pending_id, self.max_end = pending_id, max_end
        self.blank += blank
        self.malformed += malformed
        self.skipped += skipped
        data = binary.finish(len(rows) - len(portal_rows)) if write is not None else b""
        if not rows or dry:
            return None
        sample = [row[1] for row in rows[::SAMPLE_EVERY]]
        sample.append(rows[-1][1])
        if write is None or repeat:  # tuples, in order (a job id twice in the chunk: the last one wins)
            portal = [(k, pk, hex_) for k, row in enumerate(rows) for pk, hex_ in [_portal_of(row)] if pk] \
                if jobs is None else []
            return Chunk(b"", rows, portal, repeat, days, sample, len(rows))
        return Chunk(data, portal_rows, portal, repeat, days, sample, len(rows))


def _first_word(state):
    return state.strip().split(" ", 1)[0]


def _epoch_us(value):
    """Submit/Start: epoch seconds (or ISO) -> microseconds since 2000, None."""
    if value.isdigit() and len(value) < 12:
        return int(value) * 1_000_000 - OFFSET_US if value.strip("0") else None
    return _us(_epoch(value.strip()))


def _with_stray(rss, job_id, stray, given, dry):
    """MaxRSS of an allocation with that of its steps printed apart from it."""
    extra = -1 if dry else max(stray.get(job_id, -1), given.get(job_id, -1))
    return extra if extra >= 0 and (rss is None or extra > rss) else rss


def _now_us(now):
    now = now or timezone.now()
    delta = now - datetime(2000, 1, 1, tzinfo=dt_timezone.utc)
    return (delta.days * DAY + delta.seconds) * 1_000_000 + delta.microseconds


def _portal_of(row):
    """(pk, hex) of the portal job a row's job name names, or (None, None)."""
    m = PORTAL_NAME.match(row[2]) if row[2].startswith("nephele-") else None
    return (int(m.group(1)), m.group(2)) if m else (None, None)


class _Binary:
    """Formats rows in COPY's binary format (psycopg's own formatting, to
    bytes instead of the connection): writer() -> write(row) ..., finish()."""

    class _Buffer(Writer):
        def __init__(self):
            self.data = bytearray()

        def write(self, data):
            self.data += data

    def __init__(self, cursor):
        self.cursor = cursor
        self.copy = self.buffer = None

    def writer(self):
        self.buffer = self._Buffer()
        self.copy = psycopg.Copy(self.cursor, binary=True, writer=self.buffer)
        self.copy.set_types(COPY_TYPES)
        return self.copy.write_row

    def finish(self, rows):
        """The `rows` rows written, signature included, trailer not (b"" for none)."""
        self.copy.finish(None)
        data, self.copy, self.buffer = self.buffer.data, None, None
        if not rows:
            return b""
        assert data.endswith(TRAILER)
        return bytes(data[:-len(TRAILER)])


TRAILER = b"\xff\xff"  # the end of COPY's binary format


# -- the database side ------------------------------------------------------------------

_ACCOUNT_MAP = """
    SELECT account, CASE WHEN count(*) = 1 THEN min(project_id) END AS project_id FROM (
        SELECT ca.account, ca.project_id FROM clusters_clusteraccount ca WHERE ca.cluster_id = %(cluster)s
        UNION ALL
        SELECT p.slug, p.id FROM projects_project p
         WHERE NOT EXISTS (SELECT 1 FROM clusters_clusteraccount c1
                            WHERE c1.cluster_id = %(cluster)s AND (c1.project_id = p.id OR c1.account = p.slug))
    ) m GROUP BY account
"""
_USER_MAP = "SELECT username, user_id FROM clusters_posixaccount WHERE cluster_id = %(cluster)s"


def load_maps(cluster_id, cursor=None):
    """({POSIX name: user id}, {Slurm account: project id}) of a cluster; an
    account claimed twice maps to nothing."""
    own = cursor is None
    cursor = cursor or connection.cursor()
    try:
        cursor.execute(_USER_MAP, {"cluster": cluster_id})
        users = dict(cursor.fetchall())
        cursor.execute(_ACCOUNT_MAP, {"cluster": cluster_id})
        projects = {account: pk for account, pk in cursor.fetchall() if pk is not None}
        return users, projects
    finally:
        if own:
            cursor.close()


# Any chunk that is not all new goes through the staging table: one look-up
# of each row by the unique key (`o`), then update what differs and insert
# what is missing. Returns (updated, inserted, days). Run with MERGE_SETTINGS:
# whatever the size of the table, the unique index is the way to a chunk's
# rows (a hash join would read the whole table for every chunk).
MERGE = f"""
    WITH m AS MATERIALIZED (
        SELECT t.*, o.id AS old_id, o."end" AS old_end, o.ingested AS old_ingested,
               ({", ".join(f'o."{c}"' for c in COMPARED)}) IS DISTINCT FROM ({", ".join(f't."{c}"' for c in COMPARED)})
                   AS changed
          FROM acct_tmp t
          LEFT JOIN accounting_usagerecord o ON o.cluster_id = t.cluster_id AND o.job_id = t.job_id
    ),
    upd AS (
        UPDATE accounting_usagerecord u
           SET ({", ".join(f'"{c}"' for c in COMPARED)}) = ({", ".join(f'm."{c}"' for c in COMPARED)}),
               updated = m.updated
          FROM m
         WHERE m.old_id IS NOT NULL AND m.changed AND u.id = m.old_id
        RETURNING m.old_end, u."end" AS new_end, m.old_ingested <> m.ingested AS counted
    ),
    ins AS (
        INSERT INTO accounting_usagerecord ({COPY_COLUMNS})
        SELECT {", ".join(f'm."{name}"' for name, _ in COLUMNS)} FROM m WHERE m.old_id IS NULL
        RETURNING "end"
    )
    SELECT (SELECT count(*) FILTER (WHERE counted) FROM upd), (SELECT count(*) FROM ins),
           ARRAY(SELECT DISTINCT (e AT TIME ZONE 'UTC')::date FROM (
                     SELECT old_end FROM upd UNION ALL SELECT new_end FROM upd UNION ALL SELECT "end" FROM ins) x(e))
"""
MERGE_SETTINGS = {"enable_hashjoin": "off", "enable_mergejoin": "off", "jit": "off"}
STAGING = (f"CREATE TEMPORARY TABLE acct_tmp ON COMMIT DROP AS SELECT {COPY_COLUMNS} FROM accounting_usagerecord "
           "WITH NO DATA")
# Before a chunk: does one of the sampled job ids exist; the portal jobs the chunk's job names give (id, first
# 12 hex digits of their uid), as the ingest's transaction sees them; the largest record id so far.
LOOKUP = """
    SELECT EXISTS (SELECT 1 FROM accounting_usagerecord WHERE cluster_id = %(cluster)s AND job_id = ANY(%(sample)s)),
           j.ids, j.hexes, (SELECT max(id) FROM accounting_usagerecord)
      FROM (SELECT array_agg(id) AS ids, array_agg(left(replace(uid::text, '-', ''), 12)) AS hexes FROM jobs_job
             WHERE cluster_id = %(cluster)s AND id = ANY(%(pks)s::bigint[])) j
"""
# A job id twice in one chunk: the last line wins.
DEDUPE = "DELETE FROM acct_tmp a USING acct_tmp b WHERE a.job_id = b.job_id AND a.ctid < b.ctid"

ROLLUP_DELETE = "DELETE FROM accounting_dailyusage WHERE cluster_id = %(cluster)s AND day = ANY(%(days)s)"
ROLLUP_INSERT = """
    WITH d AS MATERIALIZED (
        SELECT (u."end" AT TIME ZONE 'UTC')::date AS day, u.project_id, u.user_id,
               sum(u.cpu_seconds) / 3600.0 AS core_hours,
               sum(u.alloc_gpus::bigint * u.elapsed_seconds) / 3600.0 AS gpu_hours,
               count(*) AS jobs
          FROM accounting_usagerecord u
         WHERE u.cluster_id = %(cluster)s AND ({where})
         GROUP BY 1, 2, 3
    )
    INSERT INTO accounting_dailyusage (day, cluster_id, project_id, user_id, resource, amount, updated)
    SELECT d.day, %(cluster)s, d.project_id, d.user_id, r.resource, r.amount, %(now)s
      FROM d
     CROSS JOIN LATERAL (VALUES ('core_hours', d.core_hours::float8), ('gpu_hours', d.gpu_hours::float8),
                                ('jobs', d.jobs::float8)) r(resource, amount)
     WHERE r.resource <> 'gpu_hours' OR r.amount > 0
     ORDER BY 1, 3, 4, 5
"""
# A first batch of a cluster (no record before it): the sums of each chunk's
# records (ids after the last one before the chunk), and a day's rollup from
# them once no later chunk has it. The same sums of the same integers as
# ROLLUP_INSERT: the same amounts.
PARTIALS = ("CREATE TEMPORARY TABLE acct_agg (day date, project_id bigint, user_id bigint, cpu numeric, gpu numeric, "
            "jobs bigint) ON COMMIT DROP")
PARTIAL = """
    INSERT INTO acct_agg
    SELECT (u."end" AT TIME ZONE 'UTC')::date, u.project_id, u.user_id, sum(u.cpu_seconds),
           sum(u.alloc_gpus::bigint * u.elapsed_seconds), count(*)
      FROM accounting_usagerecord u WHERE u.id > %(after)s AND u.id <= %(upto)s AND u.cluster_id = %(cluster)s
     GROUP BY 1, 2, 3
"""
ROLLUP_FROM_PARTIALS = """
    INSERT INTO accounting_dailyusage (day, cluster_id, project_id, user_id, resource, amount, updated)
    SELECT d.day, %(cluster)s, d.project_id, d.user_id, r.resource, r.amount, %(now)s
      FROM (SELECT day, project_id, user_id, sum(cpu) / 3600.0 AS core_hours, sum(gpu) / 3600.0 AS gpu_hours,
                   sum(jobs) AS jobs
              FROM acct_agg WHERE day = ANY(%(days)s) GROUP BY 1, 2, 3) d
     CROSS JOIN LATERAL (VALUES ('core_hours', d.core_hours::float8), ('gpu_hours', d.gpu_hours::float8),
                                ('jobs', d.jobs::float8)) r(resource, amount)
     WHERE r.resource <> 'gpu_hours' OR r.amount > 0
"""
ROLLUP_WORK_MEM = "64MB"  # the GROUP BY over a month of a busy cluster stays in memory


def _lock(cursor, cluster_id):
    cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [ADVISORY_LOCK, cluster_id])


def _midnight(day):
    return datetime.combine(day, datetime.min.time(), tzinfo=dt_timezone.utc)


def rollup(cluster_id, days, *, cursor=None):
    """Rebuild DailyUsage of one cluster for `days` (dates) from its records
    (delete + one INSERT ... SELECT ... GROUP BY). Idempotent; call inside a
    transaction (the per-cluster lock serializes it with ingests)."""
    days = sorted(set(days))
    if not days:
        return 0
    own = cursor is None
    cursor = cursor or connection.cursor()
    try:
        _lock(cursor, cluster_id)
        # Records of those days: by ranges of consecutive days (the BRIN index on
        # `end` finds them), or the whole span and a test of the day.
        runs = []
        for day in days:
            if runs and runs[-1][1] == day - timedelta(days=1):
                runs[-1][1] = day
            else:
                runs.append([day, day])
        params = {"cluster": cluster_id, "days": days, "now": timezone.now()}
        if len(runs) <= 8:
            where = " OR ".join(f'(u."end" >= %(lo{i})s AND u."end" < %(hi{i})s)' for i in range(len(runs)))
            for i, (lo, hi) in enumerate(runs):
                params[f"lo{i}"], params[f"hi{i}"] = _midnight(lo), _midnight(hi + timedelta(days=1))
        else:
            where = 'u."end" >= %(lo0)s AND u."end" < %(hi0)s AND (u."end" AT TIME ZONE \'UTC\')::date = ANY(%(days)s)'
            params["lo0"], params["hi0"] = _midnight(days[0]), _midnight(days[-1] + timedelta(days=1))
        cursor.execute("SELECT current_setting('work_mem')")
        work_mem = cursor.fetchone()[0]
        cursor.execute("SELECT set_config('work_mem', %s, true)", [ROLLUP_WORK_MEM])
        cursor.execute(ROLLUP_DELETE, params)
        cursor.execute(ROLLUP_INSERT.format(where=where), params)
        written = cursor.rowcount
        cursor.execute("SELECT set_config('work_mem', %s, true)", [work_mem])
        return written
    finally:
        if own:
            cursor.close()


class _Loader(threading.Thread):
    """Loads chunks into accounting_usagerecord on the connection `pgconn`
    (the raw psycopg connection of Django's, inside its transaction), while
    the caller's thread parses the next ones. Nothing else may use the
    connection until `finish` returns."""

    def __init__(self, pgconn, cluster_id, fresh=False):
        super().__init__(name="accounting-ingest-loader", daemon=True)
        self.pgconn = pgconn
        self.cluster_id = cluster_id
        # fresh: the cluster had no record before this batch, so the records of
        # a day are all in this batch's chunks: their sums are taken chunk by
        # chunk, and a day rolled up once a chunk without it comes
        self.fresh = fresh
        self.summed = None  # the largest id before the last chunk COPYed as new, until its sums are taken
        self.rolled = set()  # epoch days rolled up already
        self.redo = set()  # epoch days to roll up at the end, in full
        self.queue = queue.Queue(maxsize=2)
        self.error = None
        self.inserted = self.updated = 0
        self.days = set()  # dates
        self.epoch_days = set()  # end // 86400 of chunks COPYed as new
        self.previous = set()  # epoch days of the last chunk COPYed as new
        self.partials = False  # acct_agg made
        self.savepoints = 0  # taken in this batch
        self.savepoint = False  # one is open
        self.staged = False
        self.settings = None  # the settings MERGE_SETTINGS changes, as they were

    def run(self):
        try:
            with self.pgconn.cursor() as cursor:
                while (chunk := self.queue.get()) is not None:
                    if self.error is None:
                        self.load(cursor, chunk)
                if self.error is None:
                    self.roll(cursor, None, None)
                    if self.savepoint:
                        cursor.execute("RELEASE SAVEPOINT acct_chunk")
        except BaseException as exc:  # handed to the caller's thread by finish()
            self.error = exc
            while self.queue.get() is not None:
                pass

    def put(self, chunk):
        if self.error is not None:
            raise self.error
        self.queue.put(chunk)

    def finish(self, abort=False):
        if abort and self.error is None:
            self.error = _Abort()
        self.queue.put(None)
        self.join()
        if self.error is not None and not isinstance(self.error, _Abort):
            raise self.error

    def copy(self, cursor, table, chunk):
        with cursor.copy(f"COPY {table} ({COPY_COLUMNS}) FROM STDIN (FORMAT binary)") as copy:
            copy.set_types(COPY_TYPES)
            if chunk.data:
                copy.write(chunk.data)
            write = copy.write_row
            for row in chunk.rows:
                write(row)
            if chunk.data and not chunk.rows:
                copy.write(TRAILER)

    def load(self, cursor, chunk):
        rows = chunk.rows
        as_new = not chunk.repeat and self.savepoints < MAX_SAVEPOINTS  # may go straight into the table
        with self.pgconn.pipeline():  # one round trip
            if self.savepoint:
                cursor.execute("RELEASE SAVEPOINT acct_chunk")
                self.savepoint = False
            if as_new:
                cursor.execute("SAVEPOINT acct_chunk")
                self.savepoint, self.savepoints = True, self.savepoints + 1
            pks = "{%s}" % ",".join(map(str, map(itemgetter(1), chunk.portal)))  # an array literal: quick
            cursor.execute(LOOKUP, {"cluster": self.cluster_id, "sample": chunk.sample if as_new else [], "pks": pks})
            exists, job_ids, job_hexes, last_id = cursor.fetchone()
        self.roll(cursor, chunk, last_id or 0)
        if job_ids:  # the portal jobs named
            jobs = dict(zip(job_ids, job_hexes))
            for i, pk, hex_ in chunk.portal:
                if jobs.get(pk) == hex_:
                    rows[i] = rows[i][:-1] + (pk,)
        if as_new and not exists:  # all new, most likely: straight into the table
            try:
                self.copy(cursor, "accounting_usagerecord", chunk)
            except psycopg.errors.UniqueViolation:  # an id the sample missed
                cursor.execute("ROLLBACK TO SAVEPOINT acct_chunk")
                if self.fresh:  # (cannot happen in a first batch) the rollup done since went too: all at the end
                    self.redo |= self.rolled | self.previous | chunk.days
                    self.fresh = False
            else:
                self.inserted += chunk.records
                self.epoch_days |= chunk.days
                self.copied(cursor, chunk, last_id or 0)
                return
        if self.staged:
            cursor.execute("TRUNCATE acct_tmp")
        else:
            cursor.execute("DROP TABLE IF EXISTS acct_tmp")
            cursor.execute(STAGING)
            self.staged = True
        self.copy(cursor, "acct_tmp", chunk)
        if chunk.repeat:
            cursor.execute(DEDUPE)
        if self.settings is None:
            cursor.execute("SELECT " + ", ".join(f"current_setting('{name}')" for name in MERGE_SETTINGS))
            self.settings = dict(zip(MERGE_SETTINGS, cursor.fetchone()))
        _set(cursor, MERGE_SETTINGS)
        cursor.execute(MERGE)
        updated, inserted, days = cursor.fetchone()
        _set(cursor, self.settings)
        self.updated += updated
        self.inserted += inserted
        self.days.update(days)
        self.redo |= chunk.days | {(day - EPOCH_DAY).days for day in days}  # rolled up at the end, in full
        self.previous = set()

    def roll(self, cursor, chunk, last_id):
        """Before a chunk goes in (first batches only): take the sums of the
        chunk COPYed before, roll up the days it had and this one has not."""
        if not self.fresh:
            return
        if self.summed is not None:
            if last_id is None:
                cursor.execute("SELECT max(id) FROM accounting_usagerecord")
                last_id = cursor.fetchone()[0] or 0
            cursor.execute(PARTIAL, {"cluster": self.cluster_id, "after": self.summed, "upto": last_id})
            self.summed = None
        if chunk is not None:
            for day in chunk.days & self.rolled:  # back again: at the end, in full
                self.redo.add(day)
        closed = self.previous - (chunk.days if chunk is not None else set()) - self.redo - self.rolled
        if closed:
            days = [EPOCH_DAY + timedelta(days=day) for day in sorted(closed)]
            params = {"cluster": self.cluster_id, "days": days, "now": timezone.now()}
            cursor.execute(ROLLUP_DELETE, params)
            cursor.execute(ROLLUP_FROM_PARTIALS, params)
            self.rolled |= closed

    def copied(self, cursor, chunk, last_id):
        """A chunk went in as new."""
        if self.fresh:
            if not self.partials:
                cursor.execute("DROP TABLE IF EXISTS acct_agg")
                cursor.execute(PARTIALS)
                self.partials = True
            self.summed = last_id
        self.previous = chunk.days


class _Abort(Exception):
    pass


def _set(cursor, settings):
    """Change settings until the end of the transaction (SET LOCAL)."""
    names = list(settings)
    cursor.execute("SELECT " + ", ".join("set_config(%s, %s, true)" for _ in names),
                   [v for name in names for v in (name, settings[name])])


def ingest_lines(cluster, lines, *, now=None):
    """Load sacct lines for `cluster` (see the module docstring); returns an
    IngestResult. Everything happens in one transaction."""
    now = now or timezone.now()
    if not isinstance(lines, (list, tuple)):
        lines = list(lines)
    sep = detect_sep(lines)
    result = IngestResult()
    with transaction.atomic(), connection.cursor() as cursor:
        _lock(cursor, cluster.pk)
        mark, _ = IngestWatermark.objects.select_for_update().get_or_create(cluster=cluster)
        users, projects = load_maps(cluster.pk, cursor)
        # fresh: the first batch of this cluster (a backfill), rolled up in the pipeline
        cursor.execute("SELECT NOT EXISTS (SELECT 1 FROM accounting_usagerecord WHERE cluster_id = %s)", [cluster.pk])
        fresh = cursor.fetchone()[0]
        jobs = _portal_jobs(cursor, cluster.pk, len(lines))
        orphan_rss = None
        while True:
            batch = Batch()
            try:
                with transaction.atomic():
                    loader = _load(cluster, lines, batch, users, projects, sep, orphan_rss, now, fresh, jobs)
                break
            except _Orphan:  # rare: parse once to collect the stray steps, then again
                orphan_rss = Batch().orphan_rss
                for _ in parse(lines, Batch(orphan_rss=orphan_rss), sep=sep, dry=True):
                    pass
        if batch.malformed:
            log.warning("accounting ingest on %s: %d malformed line(s) of %d skipped; first: %s", cluster,
                        batch.malformed, batch.lines,
                        "; ".join(f"{line!r} ({why})" for line, why in batch.samples))
        result.inserted, result.updated = loader.inserted, loader.updated
        days = loader.days | {EPOCH_DAY + timedelta(days=day) for day in loader.epoch_days}
        done = {EPOCH_DAY + timedelta(days=day) for day in loader.rolled - loader.redo}  # in the pipeline
        if days - done:
            rollup(cluster.pk, days - done, cursor=cursor)
        if batch.max_end:
            batch_end = datetime.fromtimestamp(batch.max_end, tz=dt_timezone.utc)
            if mark.last_end is None or batch_end > mark.last_end:
                mark.last_end = batch_end
        mark.last_run = now
        mark.last_error = ""
        mark.last_rows = batch.records
        mark.last_changed = result.inserted + result.updated
        mark.last_malformed = batch.malformed
        mark.rows_total += batch.records
        mark.malformed_total += batch.malformed
        mark.save()
    result.lines, result.records = batch.lines, batch.records
    result.malformed, result.skipped = batch.malformed, batch.skipped
    result.days = sorted(days)
    result.last_end = mark.last_end
    return result


def _load(cluster, lines, batch, users, projects, sep, orphan_rss, now, fresh=False, jobs=None):
    """Parse `lines` and load them through a _Loader; returns the loader."""
    cursor = connection.connection.cursor()  # for the formatting only: created before the loader uses the connection
    loader = _Loader(connection.connection, cluster.pk, fresh)
    loader.start()
    collecting, switch = gc.isenabled(), sys.getswitchinterval()
    gc.disable()  # the parser makes a tuple per record and no cycles: no collections while it runs
    sys.setswitchinterval(SWITCH_INTERVAL)
    try:
        for chunk in parse(lines, batch, users=users, projects=projects, cluster_id=cluster.pk, now=now, sep=sep,
                           orphan_rss=orphan_rss, cursor=cursor, jobs=jobs):
            loader.put(chunk)
    except BaseException:
        loader.finish(abort=True)
        raise
    finally:
        sys.setswitchinterval(switch)
        if collecting:
            gc.enable()
    loader.finish()
    with connection.cursor() as cursor:
        for table, made in (("acct_tmp", loader.staged), ("acct_agg", loader.partials)):
            if made:
                cursor.execute(f"DROP TABLE {table}")
    return loader


def _portal_jobs(cursor, cluster_id, lines):
    """{pk: first 12 hex digits of the uid} of the cluster's portal jobs, when
    there are at most a quarter as many as lines (none, in a backfill of the
    time before the portal), for the parser to match job names; else None, and
    the loader looks up the jobs a chunk names."""
    cap = lines // 4
    cursor.execute("SELECT count(*) FROM (SELECT 1 FROM jobs_job WHERE cluster_id = %s LIMIT %s) j",
                   [cluster_id, cap + 1])
    if cursor.fetchone()[0] > cap:
        return None
    cursor.execute("SELECT id, left(replace(uid::text, '-', ''), 12) FROM jobs_job WHERE cluster_id = %s",
                   [cluster_id])
    return dict(cursor.fetchall())


__all__ = ["FIELDS", "parse", "Batch", "ingest_lines", "rollup", "load_maps", "IngestResult"]
