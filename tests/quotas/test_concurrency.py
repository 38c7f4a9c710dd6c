"""50 simultaneous requests against a quota with room for exactly 10: exactly
10 win and the counters are exact (PostgreSQL row locks, real threads)."""
import threading

import pytest
from django.db import connection

from projects import services
from projects.models import MemberUsage, Quota
from projects.services import QuotaExceeded

pytestmark = pytest.mark.django_db(transaction=True)


def run_concurrently(n, fn):
    """Start n threads that call fn() at the same moment; return outcomes."""
    barrier = threading.Barrier(n)
    outcomes = [None] * n

    def worker(i):
        barrier.wait()
        try:
            outcomes[i] = ("ok", fn(i))
        except QuotaExceeded as exc:
            outcomes[i] = ("refused", exc)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            outcomes[i] = ("error", exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return outcomes


def test_fifty_reservations_on_room_for_ten(cast):
    services.quota_set(project=cast.alpha, resource="cores", limit=10)

    outcomes = run_concurrently(50, lambda i: services.quota_reserve(
        project=cast.alpha, user=cast.alice if i % 2 else cast.amy, resource="cores", amount=1))

    kinds = [kind for kind, _ in outcomes]
    assert kinds.count("error") == 0, [o for o in outcomes if o[0] == "error"]
    assert kinds.count("ok") == 10
    assert kinds.count("refused") == 40
    quota = Quota.objects.get(project=cast.alpha, resource="cores")
    assert (quota.reserved, quota.used) == (10, 0)
    shares = MemberUsage.objects.filter(quota=quota)
    assert sum(s.reserved for s in shares) == 10


def test_fifty_reservations_with_a_per_member_cap(cast):
    services.quota_set(project=cast.alpha, resource="cores", limit=10, per_member_limit=4)

    outcomes = run_concurrently(50, lambda i: services.quota_reserve(
        project=cast.alpha, user=cast.alice if i % 2 else cast.amy, resource="cores", amount=1))

    assert [k for k, _ in outcomes].count("ok") == 8  # 4 each
    per_user = dict(MemberUsage.objects.filter(quota__project=cast.alpha, quota__resource="cores")
                    .values_list("user__username", "reserved"))
    assert per_user == {"alice": 4, "amy": 4}
    assert {o.scope for k, o in outcomes if k == "refused"} == {"member"}
