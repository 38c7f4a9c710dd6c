"""Parsing of sacct lines (FIELDS) into rows of UsageRecord values, in
blocks of lines, a Chunk each (see the package docstring, step 2)."""
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone as dt_timezone

from django.utils import timezone

from clusters.backends.slurm import SEP

from .rows import RSS, _Binary

FIELDS = ("JobID", "JobName", "User", "Account", "Partition", "State", "ExitCode", "AllocCPUS", "AllocTRES",
          "ElapsedRaw", "CPUTimeRAW", "ReqMem", "Submit", "Start", "End", "MaxRSS")
NFIELDS = len(FIELDS)
LOG_SAMPLES = 5  # malformed lines quoted in the log per batch

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

CHUNK_LINES = 40960  # lines per chunk at first (about 32k records, 5 MB in the staging table: temp_buffers is 8 MB)
SAMPLE_EVERY = 256  # one id in this many of a chunk is looked up before the chunk is COPYed as new


class Malformed(ValueError):
    pass


class _Orphan(Exception):
    """A step row turned up after its allocation was already emitted (sacct
    prints steps right after their job; only hand-made input does this)."""


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
