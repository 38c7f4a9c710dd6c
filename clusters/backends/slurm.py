"""Slurm through a command node over SSH (bwVisu-style).

`SlurmClient` runs sbatch/squeue/sacct/scancel/scontrol on a command node
through an `SSHPool`. Two modes:

- "service": everything runs as the portal's service user (jobs belong to it).
- "sudo": submissions and cancellations run as the job owner with
  `sudo -n -u <user>`; the node allows the service user exactly
  sbatch/squeue/scancel/sacct as any non-root user (see docs / test bed).
  Read-only queries (squeue, sacct, scontrol) run as the service user with
  `-a`, so one call covers everyone's jobs and timestamps can be asked for
  as epoch seconds (SLURM_TIME_FORMAT=%s does not survive sudo).

Safety: every argument is a separate, shell-quoted argv element (see
ssh.py); values are also validated here, so a bad partition or user name is a
clean `InvalidRequest` before anything runs. The job script goes on stdin.
Job environment variables are written into the script as
`export NAME='value'` lines (shlex-quoted) right after the shebang/#SBATCH
header -- never on the sbatch command line, so commas, quotes and newlines in
values need no special casing. (sbatch keeps its default --export=ALL.)

Many jobs at once: `submit_many` sends ONE exec, `sh -s` with a generated
script on stdin that runs one `[sudo -n -u <user>] sbatch --parsable ...`
per job (every argument shlex-quoted, as above; each job's script as a
quoted here-document whose random delimiter does not occur in it, so nothing
in a script is ever read by the outer shell) and brackets each job's output
with marker lines carrying a random per-batch token (`parse_batch_output`),
so each job gets its own Slurm id or its own error. See submit_many.

Parsers are pure functions (`parse_squeue`, `parse_sacct`,
`parse_partitions`, `parse_slurm_time`, `parse_timestamp`) for unit tests.
"""
import re
import secrets
import shlex
from datetime import datetime, timezone

from .base import (
    AccountingEntry,
    BackendError,
    BackendUnavailable,
    CommandFailed,
    HostKeyMismatch,
    InvalidRequest,
    PartitionInfo,
    QueueEntry,
    SubmitRequest,
)
from .ssh import quote_argv

SEP = "\x1f"  # ASCII unit separator: cannot appear in names we submit
POSIX_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
SLURM_NAME = re.compile(r"^[A-Za-z0-9_.+-]{1,64}$")  # accounts, partitions
JOB_ID = re.compile(r"^[0-9]+(_[0-9]+)?$")
ARRAY_SPEC = re.compile(r"^[0-9][0-9,:%-]*$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")

SQUEUE_FORMAT = SEP.join(["%i", "%A", "%F", "%K", "%T", "%r", "%u", "%S", "%j"])
SACCT_FIELDS = ("JobID,JobName,User,Account,Partition,State,ExitCode,AllocCPUS,ElapsedRaw,CPUTimeRAW,"
                "Submit,Start,End")
ALL_STATES = "PD,R,RQ,S,CD,CA,F,TO,NF,OOM,PR,BF,DL,RV,RS"
QUERY_ENV = {"SLURM_TIME_FORMAT": "%s"}


# -- parsers ------------------------------------------------------------------------


def parse_timestamp(value):
    """A Slurm time field -> aware datetime (UTC) or None. Epoch seconds
    (SLURM_TIME_FORMAT=%s) are exact; ISO 'YYYY-MM-DDTHH:MM:SS' (the default
    format, in the command node's local time) is taken as UTC."""
    value = (value or "").strip()
    if not value or value in ("Unknown", "None", "N/A", "NONE", "(null)", "0"):
        return None
    if value.isdigit():
        return datetime.fromtimestamp(int(value), tz=timezone.utc)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def parse_slurm_time(value):
    """A Slurm duration (MaxTime, DefaultTime, TimeLimit) -> whole minutes
    (seconds round up), or None for UNLIMITED/NONE/INFINITE/empty. Accepts
    M, M:S, H:M:S, D-H, D-H:M, D-H:M:S."""
    value = (value or "").strip()
    if not value or value.upper() in ("UNLIMITED", "INFINITE", "NONE", "N/A", "(NULL)"):
        return None
    days = 0
    if "-" in value:
        d, _, value = value.partition("-")
        days = int(d)
        parts = [int(p) for p in value.split(":")]
        while len(parts) < 3:  # D-H, D-H:M
            parts.append(0)
        hours, minutes, seconds = parts
    else:
        parts = [int(p) for p in value.split(":")]
        if len(parts) == 1:
            hours, minutes, seconds = 0, parts[0], 0
        elif len(parts) == 2:
            hours, (minutes, seconds) = 0, parts
        elif len(parts) == 3:
            hours, minutes, seconds = parts
        else:
            raise ValueError(f"not a Slurm time: {value!r}")
    total = days * 1440 + hours * 60 + minutes
    return total + (1 if seconds else 0)


def _split_array(job_id):
    """'123_4' -> ('123', '4'); '123_[5-9]' -> ('123', '5-9'); '123' -> ('', '')."""
    base, sep, task = job_id.partition("_")
    if not sep:
        return "", ""
    return base, task.strip("[]")


def _sep_of(text):
    return SEP if SEP in text else "|"


def parse_squeue(text):
    """Output of `squeue -h -o SQUEUE_FORMAT` -> {job_id: QueueEntry}.
    Array tasks (with -r, one line each) keep array_job_id/array_task_id."""
    entries = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.split(SEP, 8)
        if len(fields) != 9:
            continue
        job_id, _array_job, array_job_id, array_task, state, reason, user, start, name = fields
        task = "" if array_task in ("N/A", "") else array_task.strip("[]")
        entries[job_id] = QueueEntry(
            job_id=job_id,
            name=name,
            state=state.split()[0] if state else "",
            reason="" if reason in ("None", "(null)") else reason,
            user=user,
            start=parse_timestamp(start),
            array_job_id=array_job_id if task else "",
            array_task_id=task,
        )
    return entries


def _int_or_none(value):
    value = (value or "").strip()
    return int(value) if value.isdigit() else None


def parse_sacct(text):
    """Output of `sacct -X --parsable2 --noheader --format=SACCT_FIELDS`
    (delimiter '|' or SEP) -> {job_id: AccountingEntry}, allocation rows only."""
    entries = {}
    sep = _sep_of(text)
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.split(sep)
        if len(fields) < 13:
            continue
        if len(fields) > 13 and sep == "|":  # a '|' inside JobName
            extra = len(fields) - 13
            fields = [fields[0], "|".join(fields[1:2 + extra])] + fields[2 + extra:]
        (job_id, name, user, account, partition, state, exit_code, cpus, elapsed, cputime,
         submit, start, end) = fields[:13]
        if "." in job_id:  # a step row (not with -X, but be safe)
            continue
        code, signal = None, None
        if ":" in exit_code:
            a, _, b = exit_code.partition(":")
            code, signal = _int_or_none(a), _int_or_none(b)
        array_job_id, array_task_id = _split_array(job_id)
        entries[job_id] = AccountingEntry(
            job_id=job_id,
            name=name,
            state=state.split()[0] if state.strip() else "",
            exit_code=code,
            signal=signal,
            user=user,
            account=account,
            partition=partition,
            alloc_cpus=_int_or_none(cpus) or 0,
            elapsed_seconds=_int_or_none(elapsed) or 0,
            cpu_time_raw=_int_or_none(cputime) or 0,
            submit=parse_timestamp(submit),
            start=parse_timestamp(start),
            end=parse_timestamp(end),
            array_job_id=array_job_id,
            array_task_id=array_task_id,
        )
    return entries


def _limit(value):
    value = (value or "").strip()
    if not value or value.upper() in ("UNLIMITED", "NONE", "N/A", "(NULL)"):
        return None
    return int(value) if value.isdigit() else None


def _memory_mb(value):
    """'4000' / '4000M' / '4G' / 'UNLIMITED' -> MB or None."""
    value = (value or "").strip().upper()
    m = re.match(r"^([0-9]+)([KMGT]?)$", value)
    if not m:
        return None
    n, unit = int(m.group(1)), m.group(2) or "M"
    factor = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}[unit]
    return int(n * factor)


def parse_partitions(text):
    """Output of `scontrol show partition --oneliner` -> [PartitionInfo]."""
    result = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("PartitionName="):
            continue
        kv = {}
        for token in line.split():
            key, sep, value = token.partition("=")
            if sep:
                kv[key] = value
        result.append(PartitionInfo(
            name=kv["PartitionName"],
            is_default=kv.get("Default", "NO").upper() == "YES",
            state=kv.get("State", ""),
            max_time_minutes=parse_slurm_time(kv.get("MaxTime")),
            default_time_minutes=parse_slurm_time(kv.get("DefaultTime")),
            max_nodes=_limit(kv.get("MaxNodes")),
            total_nodes=_int_or_none(kv.get("TotalNodes")) or 0,
            total_cpus=_int_or_none(kv.get("TotalCPUs")) or 0,
            max_cpus_per_node=_limit(kv.get("MaxCPUsPerNode")),
            max_mem_per_node_mb=_memory_mb(kv.get("MaxMemPerNode", "")),
        ))
    return result


def script_with_environment(script, environment):
    """The script with `export NAME='value'` lines inserted after the
    shebang and the leading comment/#SBATCH block (where sbatch stops reading
    directives)."""
    if not environment:
        return script
    lines = []
    for name, value in environment.items():
        if not ENV_NAME.match(str(name)):
            raise InvalidRequest(f"invalid environment variable name: {name!r}")
        value = str(value)
        if "\x00" in value:
            raise InvalidRequest(f"NUL byte in the value of {name}")
        lines.append(f"export {name}={shlex.quote(value)}\n")
    body = script.splitlines(keepends=True)
    at = 0
    while at < len(body) and (not body[at].strip() or body[at].lstrip().startswith("#")):
        at += 1
    if at and not body[at - 1].endswith("\n"):
        body[at - 1] += "\n"
    return "".join(body[:at] + lines + body[at:])


BATCH_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# A batch is split into lanes only where each lane gets this many jobs:
# small batches stay one exec.
LANE_MIN = 8


def _heredoc_delimiter(script):
    """A random here-document delimiter that occurs nowhere in `script`."""
    while True:
        delimiter = f"NEPHELE_EOF_{secrets.token_hex(8)}"
        if delimiter not in script:
            return delimiter


def _parsable_job_id(stdout):
    """The job id from `sbatch --parsable` output ('123' or '123;cluster'),
    the last such line (warnings may come first), or ''."""
    for line in reversed(stdout.splitlines()):
        m = re.match(r"^\s*([0-9]+)(;\S*)?\s*$", line)
        if m:
            return m.group(1)
    return ""


def parse_batch_output(stdout, stderr, token):
    """A batch's output -> {key: (exit status or None, stdout, stderr)} for
    every job whose begin marker appeared (status None: no end marker, so
    sbatch may or may not have run). Marker lines are
    '<token> begin <key>' and '<token> end <key> <status>'; the token is
    random per batch, so no output can forge one."""
    jobs = {}
    current = None
    for line in stdout.split("\n"):
        if line.startswith(token + " "):
            parts = line[len(token) + 1:].split(" ")
            if len(parts) == 2 and parts[0] == "begin":
                current = parts[1]
                jobs[current] = [None, [], []]
                continue
            if len(parts) == 3 and parts[0] == "end" and parts[1] in jobs and parts[2].isdigit():
                jobs[parts[1]][0] = int(parts[2])
                current = None
                continue
        if current is not None:
            jobs[current][1].append(line)
    current = None
    for line in stderr.split("\n"):
        if line.startswith(token + " begin "):
            current = line[len(token) + 7:]
            continue
        if current in jobs:
            jobs[current][2].append(line)
    return {key: (status, "\n".join(out).strip("\n"), "\n".join(err).strip("\n"))
            for key, (status, out, err) in jobs.items()}


# -- the client ---------------------------------------------------------------------


def _check_user(user):
    """A POSIX user other than root the portal may act for, or InvalidRequest."""
    if user is None or not POSIX_USER.match(str(user)) or user == "root":
        raise InvalidRequest(f"not a valid user to run as: {user!r}")
    return user


def _check_text(label, value, *, required=True):
    value = "" if value is None else str(value)
    if required and not value:
        raise InvalidRequest(f"{label} is required")
    if CONTROL.search(value):
        raise InvalidRequest(f"{label} contains control characters (newline, tab, ...)")
    return value


ACCOUNT_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


def _check_account(account):
    if not ACCOUNT_NAME.match(str(account)):
        raise InvalidRequest(f"not a valid Slurm account name: {account!r}")


def _check_ids(job_ids):
    ids = [str(j) for j in job_ids]
    for j in ids:
        if not JOB_ID.match(j):
            raise InvalidRequest(f"not a Slurm job id: {j!r}")
    return ids


class SlurmClient:
    def __init__(self, pool, *, sudo_mode="sudo", slurm_conf="", timeout=60):
        if sudo_mode not in ("service", "sudo"):
            raise ValueError(f"sudo_mode must be 'service' or 'sudo', not {sudo_mode!r}")
        self.pool = pool
        self.sudo_mode = sudo_mode
        self.slurm_conf = slurm_conf or ""
        self.timeout = timeout

    # -- plumbing ------------------------------------------------------------------

    def _env(self, extra=None):
        env = {}
        if self.slurm_conf and "SLURM_CONF" not in getattr(self.pool, "env", {}):
            env["SLURM_CONF"] = self.slurm_conf
        env.update(extra or {})
        return env

    def _as(self, as_user, argv):
        if self.sudo_mode != "sudo":
            return argv
        return ["sudo", "-n", "-u", _check_user(as_user)] + argv

    def _run(self, argv, *, stdin=None, env=None, ok=(0,)):
        """Run a command. Everything but sbatch is safe to run twice, so a
        connection lost mid-command is retried once (on the next node if
        this one is gone); sbatch is not: the caller looks the job up first."""
        try:
            result = self.pool.run(argv, stdin=stdin, timeout=self.timeout, env=self._env(env))
        except HostKeyMismatch:
            raise
        except BackendUnavailable:
            if "sbatch" in argv:
                raise
            result = self.pool.run(argv, stdin=stdin, timeout=self.timeout, env=self._env(env))
        if result.exit_status not in ok:
            raise CommandFailed(
                f"{argv[0] if argv[0] != 'sudo' else argv[4]} failed with exit status {result.exit_status}"
                f" on {result.node}",
                stderr=result.stderr, command=argv, exit_status=result.exit_status,
            )
        return result

    # -- operations ----------------------------------------------------------------

    def sbatch_argv(self, req: SubmitRequest):
        """The sbatch argv for a request (validated; nothing here is ever
        interpreted by a shell)."""
        argv = [
            "sbatch", "--parsable",
            f"--job-name={_check_text('job name', req.job_name)}",
            f"--chdir={_check_text('work directory', req.workdir)}",
            f"--output={_check_text('output path', req.output)}",
            f"--error={_check_text('error path', req.error)}",
        ]
        if req.account:
            if not SLURM_NAME.match(req.account):
                raise InvalidRequest(f"not a valid Slurm account: {req.account!r}")
            argv.append(f"--account={req.account}")
        if req.partition:
            if not SLURM_NAME.match(req.partition):
                raise InvalidRequest(f"not a valid partition name: {req.partition!r}")
            argv.append(f"--partition={req.partition}")
        for label, value, minimum in (("nodes", req.nodes, 1), ("cpus", req.cpus, 1), ("gpus", req.gpus, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise InvalidRequest(f"{label} must be an integer >= {minimum}")
        argv += [f"--nodes={req.nodes}", f"--cpus-per-task={req.cpus}"]
        if req.memory_mb is not None:
            if not isinstance(req.memory_mb, int) or req.memory_mb < 1:
                raise InvalidRequest("memory_mb must be a positive integer")
            argv.append(f"--mem={req.memory_mb}M")
        if req.time_limit_minutes is not None:
            if not isinstance(req.time_limit_minutes, int) or req.time_limit_minutes < 1:
                raise InvalidRequest("time_limit_minutes must be a positive integer")
            argv.append(f"--time={req.time_limit_minutes}")
        if req.gpus:
            argv.append(f"--gres=gpu:{req.gpus}")
        if req.array:
            if not ARRAY_SPEC.match(req.array):
                raise InvalidRequest(f"not a valid array specification: {req.array!r}")
            argv.append(f"--array={req.array}")
        if req.hold:
            argv.append("--hold")
        return argv

    def submit(self, req: SubmitRequest, *, as_user=None):
        """Submit; returns the job id. The script (with the environment as
        export lines) goes on stdin."""
        argv = self._as(as_user, self.sbatch_argv(req))
        script = script_with_environment(req.script, req.environment)
        result = self._run(argv, stdin=script)
        job_id = result.stdout.strip().split(";")[0]
        if not job_id.isdigit():
            raise CommandFailed(f"sbatch printed no job id: {result.stdout.strip()!r}",
                                stderr=result.stderr, command=argv, exit_status=result.exit_status)
        return job_id

    def batch_script(self, items, token):
        """The shell script submit_many runs: per job, a begin marker on
        stdout and stderr, the sbatch command with the job script as a
        here-document, and an end marker with sbatch's exit status.
        `items` are (key, argv, script) from `_batch_command` (validated,
        each argv element quoted here); returns the script text."""
        out = ["# Nephele batch submission (generated); one sbatch per job.\n"]
        for key, argv, script in items:
            delimiter = _heredoc_delimiter(script)
            if not script.endswith("\n"):
                script += "\n"  # a here-document ends at a line of its own
            out.append(
                f"printf '%s\\n' '{token} begin {key}'; printf '\\n%s\\n' '{token} begin {key}' >&2\n"
                f"{quote_argv(argv)} <<'{delimiter}'\n{script}{delimiter}\n"
                f"printf '\\n%s %s\\n' '{token} end {key}' \"$?\"\n"
            )
        out.append("exit 0\n")
        return "".join(out)

    def _batch_command(self, req, as_user):
        """(argv, script) for one job of a batch, or InvalidRequest."""
        argv = self._as(as_user, self.sbatch_argv(req))
        script = script_with_environment(req.script, req.environment)
        if "\x00" in script:
            raise InvalidRequest("the job script contains a NUL byte")
        return argv, script

    def submit_many(self, items, *, lanes=1):
        """Submit several jobs with ONE command on the node (see the module
        docstring), or, with `lanes` > 1 and at least LANE_MIN jobs per lane,
        with that many commands running side by side on the node's one
        connection (sbatch waits on slurmctld, so two lanes submit nearly
        twice as fast). `items` are (key, SubmitRequest, as_user) with a
        unique short key per job (letters, digits, `_.-`). Returns {key:
        result}: the Slurm job id (str) if sbatch accepted the job;
        InvalidRequest if it never left the portal; CommandFailed if sbatch
        refused it (its stderr in the message); BackendUnavailable if it is
        unknown whether sbatch ran for it (the node stopped in the middle of
        the batch, or its lane broke): look such jobs up by name before
        submitting them again.

        Raises BackendUnavailable if no lane could run at all (no node,
        connection broken, timeout): then any job may or may not have been
        submitted. The exec is never retried here. If the connection goes
        away mid-batch, the script dies at its next marker (SIGPIPE on the
        closed channel) before starting another sbatch."""
        results, commands = {}, []
        for key, req, as_user in items:
            key = str(key)
            if not BATCH_KEY.match(key) or key in results:
                raise ValueError(f"batch keys must be unique words: {key!r}")
            try:
                argv, script = self._batch_command(req, as_user)
            except InvalidRequest as exc:
                results[key] = exc
                continue
            results[key] = None
            commands.append((key, argv, script))
        if not commands:
            return results
        lanes = max(1, min(int(lanes), len(commands) // LANE_MIN))
        # Jobs dealt round-robin, so each lane has its share of every user.
        parts = [commands[i::lanes] for i in range(lanes)]
        tokens = [f"nephele-batch-{secrets.token_hex(12)}" for _ in parts]
        # Room for every sbatch: ~10 ms each, seconds when slurmctld is busy.
        wait = self.timeout + 2 * len(parts[0])
        outcomes = self.pool.run_parallel(
            [(["sh", "-s"], self.batch_script(part, token), self._env()) for part, token in zip(parts, tokens)],
            timeout=wait)
        if all(isinstance(o, BackendUnavailable) for o in outcomes):
            raise outcomes[0]
        for part, token, res in zip(parts, tokens, outcomes):
            for key, entry in self._batch_results(part, token, res).items():
                results[key] = entry
        return results

    @staticmethod
    def _batch_results(part, token, res):
        """{key: result} of one lane (see submit_many)."""
        if isinstance(res, BackendUnavailable):
            return {key: res for key, _argv, _script in part}
        parsed = parse_batch_output(res.stdout, res.stderr, token)
        results = {}
        for key, _argv, _script in part:
            entry = parsed.get(key)
            if entry is None or entry[0] is None:
                results[key] = BackendUnavailable(
                    f"the batch stopped before sbatch reported on this job (exit status {res.exit_status}"
                    f" on {res.node})", stderr=res.stderr)
                continue
            status, stdout, stderr = entry
            job_id = _parsable_job_id(stdout)
            if status == 0 and job_id:
                results[key] = job_id
            else:
                detail = stderr.strip() or stdout.strip() or f"exit status {status}"
                results[key] = CommandFailed(
                    f"sbatch failed with exit status {status} on {res.node}: {detail}" if status
                    else f"sbatch printed no job id: {stdout.strip()!r}",
                    stderr=stderr, command="sbatch", exit_status=status)
        return results

    def ensure_dir(self, path, mode="1777"):
        """mkdir -p PATH as the service user, and chmod it (1777 by default,
        so users' jobs can write there in sudo mode) if the service user owns
        it. The path is a positional parameter of a fixed script, never code."""
        path = _check_text("directory", path)
        if not re.match(r"^[0-7]{3,4}$", mode):
            raise InvalidRequest(f"not a file mode: {mode!r}")
        self._run(["sh", "-c", 'mkdir -p -- "$1" && { [ ! -O "$1" ] || chmod "$2" -- "$1"; }', "sh", path, mode])

    def ensure_private_dir(self, path, user=None):
        """mkdir -p PATH as the service user and, if the service user owns
        it, make it 0700 with a POSIX ACL entry giving `user` (the job's
        user in sudo mode) rwx: the user's jobs write there, the portal (the
        owner) reads their output, other users of the cluster cannot even
        enter. Needs setfacl and ACL support on the node's file system; a
        node without them fails here with the command's stderr. chmod runs
        before setfacl, which then sets the mask so named entries work.
        Values are positional parameters of a fixed script, never code."""
        path = _check_text("directory", path)
        if user is not None:
            _check_user(user)
        script = ('mkdir -p -- "$1" && { [ ! -O "$1" ] || { chmod 0700 -- "$1" && '
                  '{ [ -z "$2" ] || setfacl -m "u:$2:rwx" -- "$1"; }; }; }')
        try:
            self._run(["sh", "-c", script, "sh", path, user or ""])
        except CommandFailed as exc:
            raise CommandFailed(f"cannot make the private work directory {path}", stderr=exc.stderr,
                                command=exc.command, exit_status=exc.exit_status) from exc

    def find_jobs_by_name(self, names, *, since="now-7days"):
        """{name: [job ids]} of jobs with these names (any user), pending,
        running or finished since `since`: one squeue and one sacct call.
        Array jobs are reported by their array job id."""
        names = [_check_text("job name", n) for n in names]
        if not names:
            return {}
        for n in names:
            if "," in n:
                raise InvalidRequest(f"job names looked up by name cannot contain ',': {n!r}")
        wanted = set(names)
        found = {n: [] for n in names}

        def add(name, job_id):
            base = job_id.split("_")[0]
            if name in wanted and base.isdigit() and base not in found[name]:
                found[name].append(base)

        joined = ",".join(names)
        res = self._run(["squeue", "-h", "-a", "-r", "-t", "all", f"--name={joined}", "-o", SQUEUE_FORMAT],
                        env=QUERY_ENV)
        for entry in parse_squeue(res.stdout).values():
            add(entry.name, entry.array_job_id or entry.job_id)
        res = self._run(["sacct", "-a", "-X", "--parsable2", "--noheader", f"--delimiter={SEP}",
                         f"--name={joined}", "-S", since, "-E", "now", "-s", ALL_STATES,
                         f"--format={SACCT_FIELDS}"], env=QUERY_ENV)
        for entry in parse_sacct(res.stdout).values():
            add(entry.name, entry.job_id)
        for ids in found.values():
            ids.sort(key=int)
        return found

    def queue(self, job_ids):
        """{job_id: QueueEntry} for those of `job_ids` still known to
        slurmctld (ONE squeue call, all states: a finished job stays listed
        as COMPLETED/FAILED/CANCELLED/TIMEOUT for MinJobAge, then vanishes;
        its exit code is only in `accounting`). Array jobs come back as one
        entry per task, keyed 'ARRAYID_TASK' with array_job_id/array_task_id
        set (pending tasks are expanded with -r)."""
        ids = _check_ids(job_ids)
        if not ids:
            return {}
        res = self._run(["squeue", "-h", "-a", "-r", "-t", "all", "-j", ",".join(ids), "-o", SQUEUE_FORMAT],
                        env=QUERY_ENV, ok=(0, 1))
        if res.exit_status != 0:
            if "Invalid job id" in res.stderr:  # every id has left slurmctld
                return {}
            raise CommandFailed(f"squeue failed with exit status {res.exit_status} on {res.node}",
                                stderr=res.stderr, command="squeue", exit_status=res.exit_status)
        return parse_squeue(res.stdout)

    def accounting(self, job_ids):
        """{job_id: AccountingEntry} from slurmdbd (ONE sacct call); array
        jobs give one row per task ('123_4') or per pending range ('123_[5-9]')."""
        ids = _check_ids(job_ids)
        if not ids:
            return {}
        res = self._run(["sacct", "-a", "-X", "--parsable2", "--noheader", f"--delimiter={SEP}",
                         "-j", ",".join(ids), f"--format={SACCT_FIELDS}"], env=QUERY_ENV)
        return parse_sacct(res.stdout)

    def cancel(self, job_id, *, as_user=None):
        (job_id,) = _check_ids([job_id])
        self._run(self._as(as_user, ["scancel", job_id]))

    def partitions(self):
        res = self._run(["scontrol", "show", "partition", "--oneliner"])
        return parse_partitions(res.stdout)

    # -- accounts and limits (sacctmgr; the service user is a Slurm administrator) --

    def associations(self, account):
        """The associations of `account`: {user: GrpTRESMins text}, with the
        account's own row under "". Empty if the account does not exist."""
        _check_account(account)
        res = self._run(["sacctmgr", "-n", "-P", "show", "assoc", "where", f"account={account}",
                         "format=Account,User,GrpTRESMins"])
        rows = {}
        for line in res.stdout.splitlines():
            parts = line.split("|")
            if len(parts) >= 3 and parts[0] == account:
                rows[parts[1]] = parts[2]
        return rows

    def ensure_account(self, account, *, description=""):
        _check_account(account)
        if "" not in self.associations(account):
            self._run(["sacctmgr", "-i", "add", "account", account,
                       f"description={(description or account)[:60]}", "organization=nephele"])

    def ensure_user(self, user, account):
        _check_account(account)
        if not POSIX_USER.match(str(user)) or user == "root":
            raise InvalidRequest(f"not a valid user name: {user!r}")
        if user not in self.associations(account):
            self._run(["sacctmgr", "-i", "add", "user", user, f"account={account}"])

    def set_cpu_minutes_limit(self, account, minutes):
        """GrpTRESMins=cpu=<minutes> on the account (None: no limit)."""
        _check_account(account)
        value = -1 if minutes is None else int(minutes)
        if value < -1:
            raise InvalidRequest("a limit cannot be negative")
        self._run(["sacctmgr", "-i", "modify", "account", "where", f"name={account}", "set",
                   f"GrpTRESMins=cpu={value}"], ok=(0, 1))  # 1: "Nothing modified" (already so)

    def delete_account(self, account):
        _check_account(account)
        self._run(["sacctmgr", "-i", "delete", "account", f"name={account}"], ok=(0, 1))

    def read(self, path, offset=0, max_bytes=1 << 20):
        """Bytes of a remote file over SFTP (RemoteFileMissing if absent)."""
        path = _check_text("path", path)
        if offset < 0 or max_bytes < 0:
            raise InvalidRequest("offset and max_bytes must be >= 0")
        return self.pool.sftp_read(path, offset, max_bytes)

    def tail(self, path, max_bytes=64 * 1024):
        """The last max_bytes of a remote file over SFTP."""
        path = _check_text("path", path)
        if max_bytes <= 0:
            return b""
        return self.pool.sftp_read(path, -max_bytes, max_bytes)

    def accounting_window(self, start, end):
        """Raw accounting lines of EVERY user's jobs that finished between
        `start` and `end` (aware datetimes): one `sacct -a` call, --parsable2
        with SEP as delimiter, no header, times as epoch seconds, fields

            JobID JobName User Account Partition State ExitCode AllocCPUS
            AllocTRES ElapsedRaw CPUTimeRAW ReqMem Submit Start End MaxRSS

        (accounting.ingest.FIELDS parses them). Without -X on purpose: MaxRSS
        exists only on step rows ('123.batch', '123_4.0', ...), so the steps
        come in the same call and the parser folds them into their allocation
        (max over steps); every other value is taken from the allocation row.
        One round trip instead of a second sacct pass over the steps. The
        window is given in UTC (TZ=UTC), so the node's time zone does not
        matter. Returns a list of lines (str)."""
        def stamp(value):
            if value.tzinfo is None:
                raise InvalidRequest("accounting window bounds must be aware datetimes")
            return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")

        fields = ("JobID,JobName,User,Account,Partition,State,ExitCode,AllocCPUS,AllocTRES,ElapsedRaw,"
                  "CPUTimeRAW,ReqMem,Submit,Start,End,MaxRSS")
        res = self._run(["sacct", "-a", "--parsable2", "--noheader", f"--delimiter={SEP}",
                         "-S", stamp(start), "-E", stamp(end), "-s", "CA,CD,DL,F,NF,OOM,PR,TO,BF",
                         f"--format={fields}"], env={**QUERY_ENV, "TZ": "UTC"})
        return res.stdout.splitlines()


__all__ = [
    "SlurmClient", "parse_squeue", "parse_sacct", "parse_partitions", "parse_slurm_time", "parse_timestamp",
    "parse_batch_output", "script_with_environment", "BackendError",
]
