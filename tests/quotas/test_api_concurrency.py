"""The same race over HTTP: 50 clients POST jobs at once to a live portal
whose project has core-hours for exactly 10; 10 are accepted (and really
submitted to the test bed's Slurm, held), 40 get 409 naming the resource."""
import concurrent.futures
import threading

import pytest
import requests
from rest_framework.authtoken.models import Token

from clusters.backends import ssh
from jobs import services as job_services
from jobs.models import Job, State
from projects.models import Quota

from ..jobs.conftest import slurm  # noqa: F401  (fixture)

pytestmark = pytest.mark.django_db(transaction=True)


def test_fifty_job_posts_on_room_for_ten(live_server, slurm):  # noqa: F811
    Quota.objects.filter(project=slurm.alpha, resource="core_hours").update(limit=10, used=0, reserved=0)
    token = Token.objects.create(user=slurm.alice)
    body = {"project": "alpha", "cluster": "testbed", "name": "race", "cpus": 2, "time_limit_minutes": 30,
            "script": "#!/bin/bash\n#SBATCH --hold\ntrue\n"}
    barrier = threading.Barrier(50)

    def post(_):
        with requests.Session() as session:
            barrier.wait()
            return session.post(f"{live_server.url}/api/v1/jobs/", json=body,
                                headers={"Authorization": f"Token {token.key}"}, timeout=60)

    try:
        with concurrent.futures.ThreadPoolExecutor(50) as pool:
            responses = list(pool.map(post, range(50)))

        codes = sorted(r.status_code for r in responses)
        assert codes == [201] * 10 + [409] * 40, [r.text for r in responses if r.status_code not in (201, 409)]
        refusal = next(r.json() for r in responses if r.status_code == 409)
        assert refusal["quota"]["resource"] == "core_hours" and refusal["quota"]["limit"] == 10
        quota = Quota.objects.get(project=slurm.alpha, resource="core_hours")
        assert (quota.reserved, quota.used) == (10, 0)
        jobs = Job.objects.filter(name="race")
        assert jobs.count() == 10
        assert all(j.scheduler_id for j in jobs)  # really submitted, each once
    finally:
        for job in Job.objects.filter(name="race", state=State.PENDING):
            job_services.job_cancel(job=job, actor=slurm.alice)
        ssh.close_all()
