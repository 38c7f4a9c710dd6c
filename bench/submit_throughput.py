"""Submission throughput: raw sbatch on the node vs the portal end to end.

Run with the test bed up (`make bench-submit`, or source .testbed/env and
`python bench/submit_throughput.py`). In one run it measures

  (a) raw: a shell loop of `sudo -n -u ada sbatch --hold` as the service user
      on the command node (this machine), the same user and sudo mode the
      portal uses, one job after the other;
  (b) portal: N jobs POSTed to /api/v1/jobs/ -> Celery (Redis broker, real
      worker processes) -> SSH -> sudo sbatch -> Slurm id stored in the
      database, timed from the first POST until the last job's Slurm id is
      stored;

and prints both rates and their ratio. All jobs are held and cancelled after.

Concurrency of the portal run (all on this machine, sharing its CPUs with the
node's sshd, sudo, sbatch and slurmctld, PostgreSQL and Redis):

- `--clients` threads (default 4) each POST one job at a time over HTTP with
  token authentication (a plain HTTP/1.1 client: http.client), as that many
  scripts or users submitting at once would; one POST per job, no bulk call;
- gunicorn with `--web-workers` sync worker processes (default 2) serves the
  API, as in a small production setup;
- `--workers` Celery worker processes (default 2, `--pool solo`) submit: the
  worker holding the cluster's submission stream submits every queued job of
  the cluster in batches (see jobs/submission.py), each batch split into
  `--lanes` sbatch sessions side by side (the cluster's `submit_lanes`,
  default 2, as a new cluster gets) over the worker's one SSH connection.
  Before the timed run every worker submits one job, so each has its SSH
  connection and work directory, as long-running workers do.

Besides the end-to-end figure it reports the API alone (POSTs with the
workers not consuming) and the workers alone (draining those jobs once they
consume; the first batch pays the SSH handshake), how many jobs still waited
when the last POST was answered, the batches and Celery messages, and where
the CPU went during the end-to-end run, per job.
"""
import argparse
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BENCH_DB = "nephele_bench"
TICK = os.sysconf("SC_CLK_TCK")


def setup_django():
    base = os.environ["DATABASE_URL"].rsplit("/", 1)[0]
    subprocess.run(["psql", f"{base}/postgres", "-qc", f"CREATE DATABASE {BENCH_DB}"],
                   capture_output=True)  # fails harmlessly when it exists
    os.environ["DATABASE_URL"] = f"{base}/{BENCH_DB}"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    os.environ["ALLOWED_HOSTS"] = "127.0.0.1,testserver"
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def fixtures(lanes):
    from django.contrib.auth import get_user_model

    from clusters.models import CommandNode, PosixAccount, SlurmCluster
    from projects import services as project_services
    from projects.models import Project

    env = os.environ
    cluster, _ = SlurmCluster.objects.update_or_create(
        name="bench", defaults=dict(
            ssh_user=env["SLURM_TEST_SSH_USER"], ssh_private_key=Path(env["SLURM_TEST_SSH_KEY"]).read_text(),
            known_hosts=Path(env["SLURM_TEST_KNOWN_HOSTS"]).read_text(), sudo_mode="sudo", submit_lanes=lanes,
            work_prefix=env["SLURM_TEST_WORK_PREFIX"], slurm_conf=env["SLURM_TEST_SLURM_CONF"]))
    port = int(env["SLURM_TEST_PORTS"].split(",")[0])
    CommandNode.objects.get_or_create(cluster=cluster, host=env["SLURM_TEST_HOST"], port=port)
    user = get_user_model().objects.filter(username="bench").first() or get_user_model().objects.create_user(
        "bench", email="bench@example.org")
    PosixAccount.objects.get_or_create(user=user, cluster=cluster, defaults={"username": "ada"})
    project = Project.objects.filter(slug="alpha").first() or project_services.project_create(
        slug="alpha", name="Alpha", manager=user)
    project_services.quota_set(project=project, resource="core_hours", limit=10**9)
    return cluster, user, project


def scancel_all(name_prefix):
    subprocess.run(["bash", "-c", f"squeue -h -a -o '%i %j' | awk '$2 ~ /^{name_prefix}/ {{print $1}}' "
                    "| xargs -r scancel"], check=False)


def raw_rate(n, workdir):
    script = (
        f"for i in $(seq {n}); do printf '#!/bin/bash\\ntrue\\n' | "
        f"sudo -n -u ada sbatch --hold --parsable -J rawbench-$i --chdir={workdir} -o /dev/null -e /dev/null "
        "-A alpha >/dev/null || exit 1; done"
    )
    t0 = time.perf_counter()
    subprocess.run(["sudo", "-u", os.environ["SLURM_TEST_SSH_USER"], "--preserve-env=SLURM_CONF", "bash", "-c",
                    script], check=True)
    elapsed = time.perf_counter() - t0
    scancel_all("rawbench-")
    return n / elapsed


# --- where the CPU goes ----------------------------------------------------------------


def cpu_snapshot():
    """{pid: (name, ppid, cpu seconds incl. reaped children)} of every process."""
    snap = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                raw = fh.read()
            comm = raw[raw.index("(") + 1:raw.rindex(")")]
            if comm == "postgres":  # a backend's title names its database
                with open(f"/proc/{entry}/cmdline") as fh:
                    comm = "postgres " + ("bench" if f" {BENCH_DB} " in fh.read() else "other")
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2:].split()
        snap[int(entry)] = (comm, int(fields[1]), sum(int(f) for f in fields[11:15]) / TICK)
    return snap


# Besides the groups named in cpu_by_group: what sbatch itself needs.
NEEDED_OTHERS = {"other: munged", "other: mariadbd", "other: postgres other", "other: slurmd"}


def cpu_by_group(before, after, roots):
    """CPU seconds spent between two snapshots, per group: processes under
    one of `roots` ({pid: group}), else by command name."""
    by_name = {"postgres bench": "postgres (bench database)", "redis-server": "redis",
               "sshd": "node (sshd, sh, sudo, sbatch)", "slurmctld": "slurmctld+dbd", "slurmdbd": "slurmctld+dbd"}
    totals = {}
    for pid, (name, _ppid, cpu) in after.items():
        spent = cpu - before.get(pid, (None, None, 0.0))[2]
        if spent <= 0:
            continue
        group, up, hops = None, pid, 0
        while up and hops < 50:
            if up in roots:
                group = roots[up]
                break
            up, hops = after.get(up, (None, 0, 0))[1], hops + 1
        group = group or by_name.get(name, f"other: {name}")
        totals[group] = totals.get(group, 0.0) + spent
    return totals


# --- the portal ---------------------------------------------------------------------------


def portal_rates(n, cluster, user, project, workers, web_workers, clients):
    """Over real HTTP: gunicorn serves the API, `clients` threads POST
    concurrently (token auth), Celery workers submit over SSH. Three runs:
    the API alone (workers not consuming), the workers alone (draining those
    jobs), and end to end (both at once, the figure the target is about)."""
    import concurrent.futures

    from django.db import connection
    from rest_framework.authtoken.models import Token

    from jobs.models import Job
    from jobs.tasks import submit_job
    from portal.celery import app

    queue, idle = f"bench-{os.getpid()}", f"bench-idle-{os.getpid()}"
    port = 8790
    env = dict(os.environ, CELERY_TASK_DEFAULT_QUEUE=queue)
    web = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "portal.wsgi", "-b", f"127.0.0.1:{port}", "-w", str(web_workers),
         "--log-level", "warning"], cwd=ROOT, env=env)
    names = [f"bench{i}-{os.getpid()}@bench" for i in range(workers)]
    # The workers start on an idle queue and are told to consume the jobs'
    # queue after the API-alone run, so their start-up is not timed.
    # Each worker also listens on a queue of its own, to be warmed up (its
    # SSH connection made) before the timed end-to-end run, as in a
    # long-running deployment.
    celery = [subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "portal", "worker", "--pool", "solo", "-Q", f"{idle},warm-{name}",
         "-n", name, "--loglevel", "WARNING"], cwd=ROOT, env=env) for name in names]
    procs = [web, *celery]
    token, _ = Token.objects.get_or_create(user=user)
    headers = {"Authorization": f"Token {token.key}", "Content-Type": "application/json"}
    body = json.dumps({"project": project.slug, "cluster": cluster.name, "name": "portalbench", "cpus": 1,
                       "time_limit_minutes": 1, "script": "#!/bin/bash\n#SBATCH --hold\ntrue\n"})
    local = threading.local()

    def post(_):
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/api/v1/jobs/", body, headers)
        response = conn.getresponse()
        text = response.read()
        assert response.status == 201, text
        if response.getheader("Connection", "").lower() == "close":
            conn.close()  # gunicorn's sync workers close after each request

    def post_all():
        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            list(pool.map(post, range(n)))
        return t0, time.perf_counter() - t0

    def submitted():
        with connection.cursor() as cursor:  # cheap: polled every 20 ms
            cursor.execute(f"SELECT count(*) FROM {Job._meta.db_table} WHERE cluster_id = %s AND scheduler_id <> ''",
                           [cluster.pk])
            return cursor.fetchone()[0]

    def wait_submitted(t0, count=n):
        while submitted() < count:
            if time.perf_counter() - t0 > 600:
                raise SystemExit("portal submission did not finish in 10 minutes")
            time.sleep(0.02)
        return time.perf_counter() - t0

    def tasks_done():
        stats = app.control.inspect(destination=names, timeout=2.0).stats() or {}
        return sum(sum(s.get("total", {}).values()) for s in stats.values())

    def reset():
        scancel_all("nephele-")
        Job.objects.filter(cluster=cluster).delete()

    try:
        deadline = time.monotonic() + 60
        while True:  # wait for the web server and the workers
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/healthz")
                assert conn.getresponse().status == 200
                conn.close()
                if len(app.control.ping(destination=names, timeout=1.0)) == workers:
                    break
            except (OSError, AssertionError):
                pass
            if time.monotonic() > deadline:
                raise SystemExit("gunicorn or the Celery workers did not start in 60 s")
            time.sleep(0.2)
        reset()
        _, api_time = post_all()  # 1. the API alone: jobs wait in the broker
        t0 = time.perf_counter()
        app.control.add_consumer(queue, destination=names, reply=True)
        drain_time = wait_submitted(t0)  # 2. the workers alone
        reset()
        for name in names:  # warm every worker up: a job submitted by each
            post(None)
            job = Job.objects.filter(cluster=cluster, name="portalbench").order_by("-pk").first()
            submit_job.apply_async(args=(job.pk,), queue=f"warm-{name}")
            wait_submitted(time.perf_counter(), Job.objects.filter(cluster=cluster).count())
            time.sleep(0.2)  # the message sent by the POST, if the other worker took it
        reset()
        tasks_before = tasks_done()
        before = cpu_snapshot()
        t0, posted = post_all()  # 3. end to end
        waiting = n - submitted()
        elapsed = wait_submitted(t0)
        spent = cpu_by_group(before, cpu_snapshot(), {
            web.pid: "web (gunicorn)", os.getpid(): "bench (clients, polling)",
            **{p.pid: "celery workers" for p in celery}})
        batches = Job.objects.filter(cluster=cluster).values("submitted_at").distinct().count()  # one per batch
        print(f"portal end to end: {n} POSTs took {posted:.2f} s ({waiting} jobs still waiting then); all Slurm ids "
              f"stored after {elapsed:.2f} s; {batches} batches; {tasks_done() - tasks_before} Celery messages")
        print("CPU per job during it (ms): " + ", ".join(
            f"{k} {1000 * v / n:.1f}" for k, v in sorted(spent.items(), key=lambda kv: -kv[1])))
        # Processes that neither the portal nor the raw loop needs (e.g. the
        # OpenStack test bed's periodic tasks) took the CPU the run shares.
        busy = {k: v for k, v in spent.items() if k.startswith("other: ") and k not in NEEDED_OTHERS}
        if sum(busy.values()) * 1000 / n > 1.0:
            top = max(busy, key=busy.get)
            print(f"WARNING: other work took {1000 * sum(busy.values()) / n:.1f} ms of CPU per job during the run "
                  f"({top[7:]} {1000 * busy[top] / n:.1f}): the portal's figure is low; run again on a quiet machine")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
        reset()
    return n / elapsed, n / api_time, n / drain_time


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=200, help="jobs per method (default 200)")
    parser.add_argument("--workers", type=int, default=2, help="Celery worker processes (default 2)")
    parser.add_argument("--web-workers", type=int, default=2, help="gunicorn worker processes (default 2)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent API clients (default 4)")
    parser.add_argument("--lanes", type=int, default=2,
                        help="the cluster's submit_lanes: sbatch sessions side by side per batch (default 2)")
    args = parser.parse_args()
    setup_django()
    cluster, user, project = fixtures(args.lanes)
    from clusters.services import user_workdir

    workdir = user_workdir(cluster=cluster, username="ada")
    subprocess.run(["sudo", "-u", os.environ["SLURM_TEST_SSH_USER"], "mkdir", "-p", "-m", "1777", workdir], check=True)
    raw = raw_rate(args.n, workdir)
    portal, api, drain = portal_rates(args.n, cluster, user, project, args.workers, args.web_workers, args.clients)
    print(f"raw sbatch loop (sudo -u ada, on the node): {raw:8.1f} jobs/s")
    print(f"portal API -> Celery -> SSH -> sbatch:      {portal:8.1f} jobs/s  "
          f"({args.clients} clients, {args.web_workers} web and {args.workers} Celery workers)")
    print(f"  of which the API alone (no workers):       {api:8.1f} jobs/s  ({api / raw:.2f} of raw)")
    print(f"  and the Celery workers alone (draining):   {drain:8.1f} jobs/s  ({drain / raw:.2f} of raw)")
    print(f"ratio portal/raw: {portal / raw:.2f}  (target >= 0.80)")


if __name__ == "__main__":
    main()
