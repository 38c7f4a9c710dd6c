"""SSHPool + SlurmClient against the REAL test bed: a Slurm cluster behind two
sshd "command nodes" (scripts/slurm/testbed-slurm, started by `make test`).

No database needed. Jobs are tiny (echo, short sleeps, held jobs); a job that
must hit its time limit is submitted first (module fixture) so its minute
runs while the other tests do.
"""
import os
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from clusters.backends.base import (
    BackendUnavailable,
    CommandFailed,
    HostKeyMismatch,
    InvalidRequest,
    RemoteFileMissing,
    SubmitRequest,
)
from clusters.backends.slurm import SlurmClient
from clusters.backends.ssh import SSHPool
from tests.testbed import require_env

REPO = Path(__file__).resolve().parents[2]
TESTBED = REPO / "scripts" / "slurm" / "testbed-slurm"
NEEDED = ["SLURM_TEST_HOST", "SLURM_TEST_PORTS", "SLURM_TEST_SSH_USER", "SLURM_TEST_SSH_KEY",
          "SLURM_TEST_KNOWN_HOSTS", "SLURM_TEST_SLURM_CONF", "SLURM_TEST_WORK_PREFIX", "SLURM_TEST_USERS"]
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
            "BOOT_FAIL", "DEADLINE"}
RUN = uuid.uuid4().hex[:8]


class Bed:
    def __init__(self):
        e = require_env("Slurm", NEEDED)
        self.host = e["SLURM_TEST_HOST"]
        self.ports = [int(p) for p in e["SLURM_TEST_PORTS"].split(",")]
        self.user = e["SLURM_TEST_SSH_USER"]
        self.key = Path(e["SLURM_TEST_SSH_KEY"]).read_text()
        self.known_hosts = Path(e["SLURM_TEST_KNOWN_HOSTS"]).read_text()
        self.slurm_conf = e["SLURM_TEST_SLURM_CONF"]
        self.prefix = e["SLURM_TEST_WORK_PREFIX"]
        self.users = e["SLURM_TEST_USERS"].split(",")

    def pool(self, ports=None, known_hosts=None, **kw):
        nodes = [(self.host, p) for p in (ports or self.ports)]
        return SSHPool(nodes=nodes, username=self.user, private_key_text=self.key,
                       known_hosts_text=self.known_hosts if known_hosts is None else known_hosts, **kw)

    def local(self, *argv):
        """A Slurm admin command on the test bed itself (root, local)."""
        return subprocess.run(argv, env={**os.environ, "SLURM_CONF": self.slurm_conf},
                              capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="module")
def bed():
    return Bed()


@pytest.fixture(scope="module")
def pool(bed):
    p = bed.pool()
    yield p
    p.close()


@pytest.fixture(scope="module")
def service(pool, bed):
    return SlurmClient(pool, sudo_mode="service", slurm_conf=bed.slurm_conf)


@pytest.fixture(scope="module")
def sudo(pool, bed):
    return SlurmClient(pool, sudo_mode="sudo", slurm_conf=bed.slurm_conf)


@pytest.fixture(scope="module")
def workdirs(service, sudo, bed):
    """$PREFIX/$USER dirs (made by the service user, 1777) and a per-run dir."""
    dirs = {}
    for user in [bed.user] + bed.users:
        service.ensure_dir(f"{bed.prefix}/{user}")
        dirs[user] = f"{bed.prefix}/{user}/t-{RUN}"
        service.ensure_dir(dirs[user])
    return dirs


def request(workdir, name, script, **kw):
    return SubmitRequest(script=script, job_name=f"{name}-{RUN}", workdir=workdir,
                         output=f"{name}-%j.out", error=f"{name}-%j.err", **kw)


def wait_for_end(client, job_id, timeout=40):
    """Poll squeue, then sacct, until the job has a final accounting row."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        q = client.queue([job_id])
        if job_id not in q or q[job_id].state in TERMINAL:
            acct = client.accounting([job_id]).get(job_id)
            # slurmdbd first holds a placeholder row (name "allocation", no
            # partition) for a second or two: wait for the full record.
            if acct and acct.state in TERMINAL and acct.name != "allocation":
                return acct
        time.sleep(0.25)
    raise AssertionError(f"job {job_id} did not finish in {timeout}s: {client.queue([job_id])}")


def wait_for_state(client, job_id, state, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = client.queue([job_id]).get(job_id)
        if entry and entry.state == state:
            return entry
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} never reached {state}: {client.queue([job_id])}")


@pytest.fixture(scope="module")
def timeout_job(sudo, workdirs):
    """Submitted first: a 1-minute job that sleeps longer, as ada."""
    job_id = sudo.submit(
        request(workdirs["ada"], "timeout", "#!/bin/bash\nsleep 300\n", account="alpha", time_limit_minutes=1),
        as_user="ada",
    )
    yield job_id
    sudo.cancel(job_id, as_user="ada")


@pytest.fixture(autouse=True, scope="module")
def _start_timeout_job_early(timeout_job):
    return timeout_job


# -- SSH pool ------------------------------------------------------------------------


def test_run_quotes_every_argument(pool, tmp_path):
    marker = f"/tmp/pwned-{RUN}-run"
    nasty = [f"$(touch {marker})", f"`touch {marker}`", f"a; touch {marker}", "it's \"q\"", "x\ny", "*", "&&", ""]
    result = pool.run(["printf", "[%s]", *nasty])
    assert result.exit_status == 0
    assert result.stdout == "".join(f"[{a}]" for a in nasty)
    assert result.node in {f"{pool.nodes[0][0]}:{p}" for _, p in pool.nodes}
    assert not os.path.exists(marker)


def test_run_stdin_stderr_and_exit_status(pool):
    r = pool.run(["sh", "-c", 'cat; echo oops >&2; exit 7'], stdin="line1\nline2\n")
    assert (r.stdout, r.stderr.strip(), r.exit_status) == ("line1\nline2\n", "oops", 7)
    big = "x" * 300_000
    r = pool.run(["wc", "-c"], stdin=big)
    assert r.stdout.strip() == "300000"


def test_run_timeout_is_typed(pool):
    with pytest.raises(BackendUnavailable, match="timed out"):
        pool.run(["sleep", "5"], timeout=0.5)
    assert pool.run(["true"]).exit_status == 0  # the pool still works


def test_concurrent_channels(pool):
    """Many threads, many quick commands on one connection: with or without
    stdin, read or left unread. Each command ends (and the node closes its
    channel) while the client may still be sending on it; the client must
    never send after the channel's CLOSE, or OpenSSH drops the connection
    ("ieof packet referred to nonexistent channel") and every command on it
    fails. Without the fix this broke in most runs."""
    results, errors = [], []
    cases = [
        (["echo", "{i}"], None, "{i}"),
        (["cat"], "{i}", "{i}"),
        (["sh", "-c", "echo {i}; exit 3"], "unread " * 5000, "{i}"),  # ends without reading stdin
        (["sh", "-c", 'head -c 3 >/dev/null; echo "$1"', "sh", "{i}"], "partly read" * 100, "{i}"),
    ]

    def work(i):
        for n in range(40):
            argv, stdin, expected = cases[n % len(cases)]
            try:
                r = pool.run([a.format(i=i) for a in argv], stdin=stdin and stdin.format(i=i))
                results.append((r.stdout.strip(), expected.format(i=i)))
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, (len(errors), errors[:3])
    assert len(results) == 16 * 40
    assert all(got == want for got, want in results)
    assert pool.run(["sh", "-c", "exit 3"], stdin="x").exit_status == 3  # the status survives the drain


def test_run_parallel_runs_side_by_side_on_one_connection(pool):
    script = 'sleep 1; cat; echo "err $1" >&2; exit "$1"'
    t0 = time.monotonic()
    results = pool.run_parallel([(["sh", "-c", script, "sh", str(i)], f"in {i}\n", None) for i in range(3)])
    elapsed = time.monotonic() - t0
    assert elapsed < 2.5, elapsed  # one after the other would take 3 s
    assert [(r.stdout, r.stderr.strip(), r.exit_status) for r in results] == [
        (f"in {i}\n", f"err {i}", i) for i in range(3)]
    assert len({r.node for r in results}) == 1
    assert pool.run_parallel([]) == []


def test_run_parallel_reports_each_command_on_its_own(pool):
    slow, quick = pool.run_parallel([(["sleep", "5"], None, None), (["echo", "ok"], None, None)], timeout=1)
    assert isinstance(slow, BackendUnavailable) and "timed out" in str(slow)
    assert (quick.stdout, quick.exit_status) == ("ok\n", 0)
    assert pool.run(["true"]).exit_status == 0  # the connection still works


def test_run_parallel_reports_a_connection_lost_mid_way(bed):
    pool = bed.pool()
    try:
        assert pool.run(["true"]).exit_status == 0
        transport = next(iter(pool._transports.values()))
        threading.Timer(0.5, transport.close).start()  # the link goes down while both run
        results = pool.run_parallel([(["sleep", "3"], None, None), (["sleep", "3"], None, None)], timeout=10)
        assert all(isinstance(r, BackendUnavailable) for r in results), results
        assert all("without an exit status" in str(r) or "broke" in str(r) for r in results), results
        assert pool.run(["echo", "again"]).stdout == "again\n"  # reconnects
    finally:
        pool.close()


def test_host_key_mismatch_is_refused(bed):
    lines = bed.known_hosts.strip().splitlines()
    first_port, second_port = bed.ports[0], bed.ports[1]
    other_key = next(ln for ln in lines if ln.startswith(f"[{bed.host}]:{second_port} ")).split(" ", 1)[1]
    wrong = f"[{bed.host}]:{first_port} {other_key}\n"
    p = bed.pool(ports=[first_port], known_hosts=wrong)
    with pytest.raises(HostKeyMismatch, match="does not match"):
        p.run(["true"])
    p.close()
    unknown = bed.pool(ports=[first_port], known_hosts=f"[{bed.host}]:{second_port} {other_key}\n")
    with pytest.raises(HostKeyMismatch, match="no pinned host key"):
        unknown.run(["true"])
    unknown.close()


def test_all_nodes_down_names_each_node(bed):
    some_key = bed.known_hosts.split()[1:3]
    known = "".join(f"[{bed.host}]:{port} {some_key[0]} {some_key[1]}\n" for port in (1, 9))
    p = bed.pool(ports=[1, 9], known_hosts=known, connect_timeout=2)
    with pytest.raises(BackendUnavailable) as info:
        p.run(["true"])
    assert f"{bed.host}:1" in str(info.value) and f"{bed.host}:9" in str(info.value)
    assert set(info.value.errors) == {f"{bed.host}:1", f"{bed.host}:9"}


def test_failover_to_second_node(bed):
    first, second = bed.ports[0], bed.ports[1]
    p = bed.pool()
    client = SlurmClient(p, sudo_mode="service", slurm_conf=bed.slurm_conf)
    try:
        assert p.run(["true"]).node == f"{bed.host}:{first}"
        subprocess.run([str(TESTBED), "stop-node", str(first)], check=True, timeout=60)
        r = p.run(["echo", "still here"])
        assert (r.stdout, r.node) == ("still here\n", f"{bed.host}:{second}")
        assert f"{bed.host}:{first}" in p.last_errors
        assert client.partitions()  # Slurm through the second node
    finally:
        subprocess.run([str(TESTBED), "start-node", str(first)], check=True, timeout=60)
        p.close()
    fresh = bed.pool()
    assert fresh.run(["true"]).node == f"{bed.host}:{first}"
    fresh.close()


# -- Slurm ---------------------------------------------------------------------------


def test_partitions(service):
    parts = {p.name: p for p in service.partitions()}
    assert parts["debug"].is_default and parts["debug"].max_time_minutes == 30
    assert not parts["long"].is_default and parts["long"].max_time_minutes == 1440
    assert parts["debug"].total_cpus >= 1 and parts["debug"].total_nodes == 1


def test_submit_complete_and_read_output(service, workdirs, bed):
    wd = workdirs[bed.user]
    job_id = service.submit(request(wd, "hello", "#!/bin/bash\necho hello from $SLURM_JOB_ID\necho err >&2\n",
                                    account="beta", environment={"GREETING": "hi"}), as_user=None)
    acct = wait_for_end(service, job_id)
    assert (acct.state, acct.exit_code, acct.user, acct.account) == ("COMPLETED", 0, bed.user, "beta")
    assert acct.start and acct.end and acct.submit
    out = service.read(f"{wd}/hello-{job_id}.out")
    assert out == f"hello from {job_id}\n".encode()
    assert service.tail(f"{wd}/hello-{job_id}.out", 4) == out[-4:]
    assert service.tail(f"{wd}/hello-{job_id}.out", 1000) == out
    assert service.read(f"{wd}/hello-{job_id}.err") == b"err\n"
    assert service.read(f"{wd}/hello-{job_id}.out", offset=6, max_bytes=4) == b"from"


def test_missing_output_is_typed(service, workdirs, bed):
    with pytest.raises(RemoteFileMissing):
        service.read(f"{workdirs[bed.user]}/does-not-exist.out")
    with pytest.raises(RemoteFileMissing):
        service.tail(f"{workdirs[bed.user]}/does-not-exist.out", 100)


def test_failing_job_exit_code(sudo, workdirs):
    job_id = sudo.submit(request(workdirs["bert"], "fail", "#!/bin/bash\necho bye\nexit 3\n", account="beta"),
                         as_user="bert")
    acct = wait_for_end(sudo, job_id)
    assert (acct.state, acct.exit_code, acct.signal, acct.user) == ("FAILED", 3, 0, "bert")


def test_sudo_submission_runs_as_the_user(sudo, workdirs):
    wd = workdirs["ada"]
    job_id = sudo.submit(request(wd, "whoami", "#!/bin/bash\nid -un\numask\n", account="beta"), as_user="ada")
    acct = wait_for_end(sudo, job_id)
    assert (acct.state, acct.user, acct.account) == ("COMPLETED", "ada", "beta")
    assert sudo.read(f"{wd}/whoami-{job_id}.out").decode().split() == ["ada", "0022"]


def test_private_user_dir_lets_in_the_user_and_the_portal_only(pool, sudo, service, bed):
    private, shared = f"{bed.prefix}/private-{RUN}", f"{bed.prefix}/shared-{RUN}"
    try:
        sudo.ensure_private_dir(private, "ada")
        sudo.ensure_private_dir(private, "ada")  # idempotent
        service.ensure_dir(shared)
        assert oct(os.stat(private).st_mode & 0o7777) == "0o770"  # 0700, the group bits show the ACL mask
        acl = bed.local("getfacl", "-cp", private).stdout.split()
        assert "user:ada:rwx" in acl and "other::---" in acl
        outputs = {}
        for wd in (private, shared):
            job_id = sudo.submit(request(wd, "secret", "#!/bin/bash\necho top secret\n", account="beta"),
                                 as_user="ada")
            assert wait_for_end(sudo, job_id).state == "COMPLETED"
            outputs[wd] = f"{wd}/secret-{job_id}.out"
            assert sudo.read(outputs[wd]) == b"top secret\n"  # the portal reads it over SFTP either way
        as_bert = bed.local("runuser", "-u", "bert", "--", "cat", outputs[private])
        assert as_bert.returncode != 0 and "Permission denied" in as_bert.stderr
        assert bed.local("runuser", "-u", "bert", "--", "ls", private).returncode != 0
        assert bed.local("runuser", "-u", "bert", "--", "cat", outputs[shared]).stdout == "top secret\n"

        in_service_mode = f"{private}/service"
        service.ensure_private_dir(in_service_mode)  # no user: 0700 and no ACL entry
        assert oct(os.stat(in_service_mode).st_mode & 0o7777) == "0o700"
        for user in ("root", "a b", "$(id)"):
            with pytest.raises(InvalidRequest):
                sudo.ensure_private_dir(f"{bed.prefix}/x-{RUN}", user)
        assert not os.path.exists(f"{bed.prefix}/x-{RUN}")
    finally:
        shutil.rmtree(private, ignore_errors=True)
        shutil.rmtree(shared, ignore_errors=True)


def test_a_private_dir_that_cannot_be_made_is_a_clear_error(sudo, bed):
    with pytest.raises(CommandFailed, match="cannot make the private work directory /proc/") as failed:
        sudo.ensure_private_dir(f"/proc/nephele-{RUN}", "ada")
    assert "mkdir" in failed.value.stderr  # the node's own words are kept


def test_sudo_cannot_become_root_or_run_other_commands(pool, sudo, workdirs):
    ok = pool.run(["sudo", "-n", "-u", "bert", "/usr/bin/sbatch", "--version"])
    assert ok.exit_status == 0 and ok.stdout.startswith("slurm")
    as_root = pool.run(["sudo", "-n", "-u", "root", "/usr/bin/sbatch", "--version"])
    assert as_root.exit_status != 0 and "password is required" in as_root.stderr
    other = pool.run(["sudo", "-n", "-u", "bert", "/usr/bin/id"])
    assert other.exit_status != 0
    with pytest.raises(InvalidRequest):
        sudo.submit(request(workdirs["ada"], "root", "#!/bin/bash\nid\n"), as_user="root")
    with pytest.raises(InvalidRequest):
        sudo.submit(request(workdirs["ada"], "bad", "#!/bin/bash\nid\n"), as_user="ada;id")
    with pytest.raises(InvalidRequest):
        sudo.submit(request(workdirs["ada"], "none", "#!/bin/bash\nid\n"), as_user=None)


def test_wrong_account_is_a_clean_error(sudo, workdirs):
    with pytest.raises(CommandFailed) as info:
        sudo.submit(request(workdirs["bert"], "acct", "#!/bin/bash\ntrue\n", account="alpha"), as_user="bert")
    assert "Invalid account" in info.value.stderr
    assert info.value.exit_status != 0


def test_cancel(sudo, workdirs):
    job_id = sudo.submit(request(workdirs["bert"], "cancel", "#!/bin/bash\nsleep 60\n", account="beta"),
                         as_user="bert")
    sudo.cancel(job_id, as_user="bert")
    acct = wait_for_end(sudo, job_id)
    assert acct.state == "CANCELLED"


def test_shell_metacharacters_stay_literal(service, sudo, workdirs, bed):
    marker = f"/tmp/pwned-{RUN}"
    evil = f"$(touch {marker})`touch {marker}`;touch {marker}|'\"&"
    wd = f"{workdirs['ada']}/{evil}"
    service.ensure_dir(wd)
    job_id = sudo.submit(
        SubmitRequest(
            script='#!/bin/bash\n#SBATCH --comment=meta\nprintf "%s\\n" "$EVIL" "$MULTI" "$PWD"\n',
            job_name=f"m{evil}-{RUN}", workdir=wd, output="meta-%j.out", error="meta-%j.err", account="alpha",
            environment={"EVIL": evil, "MULTI": "a,b\nc=d 'e'"},
        ),
        as_user="ada",
    )
    acct = wait_for_end(sudo, job_id)
    assert acct.state == "COMPLETED"
    out = sudo.read(f"{wd}/meta-{job_id}.out").decode()
    assert out == f"{evil}\na,b\nc=d 'e'\n{wd}\n"
    names = sudo.find_jobs_by_name([f"m{evil}-{RUN}"])
    assert names[f"m{evil}-{RUN}"] == [job_id]
    for bad in (dict(partition=f"debug;touch {marker}"), dict(account=f"$(touch {marker})"),
                dict(array=f"1-2;touch {marker}")):
        with pytest.raises(InvalidRequest):
            sudo.submit(request(workdirs["ada"], "bad", "#!/bin/bash\ntrue\n", **bad), as_user="ada")
    with pytest.raises(InvalidRequest):
        sudo.submit(request(workdirs["ada"], f"new\nline;touch {marker}", "#!/bin/bash\ntrue\n"), as_user="ada")
    with pytest.raises(InvalidRequest):
        sudo.submit(request(workdirs["ada"], "env", "#!/bin/bash\ntrue\n", environment={f"A;touch {marker}": "1"}),
                    as_user="ada")
    with pytest.raises(CommandFailed):  # a partition that does not exist: sbatch's own error
        sudo.submit(request(workdirs["ada"], "nopart", "#!/bin/bash\ntrue\n", partition="nope"), as_user="ada")
    assert not os.path.exists(marker)


def test_queue_is_one_squeue_call(service, workdirs, bed):
    wd = workdirs[bed.user]
    ids = [service.submit(request(wd, f"held{i}", "#!/bin/bash\ntrue\n", hold=True)) for i in range(5)]
    calls = []
    original = service.pool.run

    def counting(argv, **kw):
        calls.append(list(argv))
        return original(argv, **kw)

    service.pool.run = counting
    try:
        q = service.queue(ids)
    finally:
        del service.pool.run
    assert [c[0] for c in calls] == ["squeue"]
    assert set(q) == set(ids)
    assert all(e.state == "PENDING" and e.reason == "JobHeldUser" and e.user == bed.user for e in q.values())
    for j in ids:
        service.cancel(j)
    assert service.queue(["999999"]) == {}
    assert service.queue(["999998", "999999"]) == {}


def test_array_job(service, workdirs, bed):
    job_id = service.submit(request(workdirs[bed.user], "arr", "#!/bin/bash\ntrue\n", array="0-2", hold=True))
    q = service.queue([job_id])
    assert {(e.array_job_id, e.array_task_id) for e in q.values()} == {(job_id, "0"), (job_id, "1"), (job_id, "2")}
    assert set(q) == {f"{job_id}_0", f"{job_id}_1", f"{job_id}_2"}
    service.cancel(job_id)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        acct = service.accounting([job_id])
        if acct and all(a.state == "CANCELLED" and a.array_job_id for a in acct.values()):
            break
        time.sleep(0.25)
    assert acct and all(a.array_job_id == job_id for a in acct.values()), acct


def test_find_jobs_by_name_running_and_finished(service, workdirs, bed):
    wd = workdirs[bed.user]
    done = service.submit(request(wd, "findme-done", "#!/bin/bash\ntrue\n"))
    wait_for_end(service, done)
    running = service.submit(request(wd, "findme-run", "#!/bin/bash\nsleep 30\n"))
    try:
        wait_for_state(service, running, "RUNNING")
        calls = []
        original = service.pool.run
        service.pool.run = lambda argv, **kw: (calls.append(argv[0]), original(argv, **kw))[1]
        try:
            found = service.find_jobs_by_name([f"findme-done-{RUN}", f"findme-run-{RUN}", f"nothing-{RUN}"])
        finally:
            del service.pool.run
        assert calls == ["squeue", "sacct"]
        assert found == {f"findme-done-{RUN}": [done], f"findme-run-{RUN}": [running], f"nothing-{RUN}": []}
    finally:
        service.cancel(running)


def test_time_limit_gives_timeout(sudo, timeout_job, bed):
    """The job has a 1-minute limit; slurmctld checks limits every 30 s, so
    once it runs the test moves its end time to now (as an admin would) to
    keep the suite short; the state is still Slurm's own TIMEOUT."""
    entry = wait_for_state(sudo, timeout_job, "RUNNING", timeout=60)
    assert entry.user == "ada"
    done = bed.local("scontrol", "update", f"JobId={timeout_job}", "EndTime=now")
    assert done.returncode == 0, done.stderr
    acct = wait_for_end(sudo, timeout_job, timeout=75)
    assert (acct.state, acct.user) == ("TIMEOUT", "ada")
