"""Quota maths: reservations, commits and releases move `used`/`reserved`
on the project's Quota and the member's MemberUsage; limits refuse with
QuotaExceeded; the derived properties drive the bars."""
import threading

import pytest
from django.core.exceptions import ValidationError
from django.db import connection

from projects import services
from projects.forms import QuotaForm
from projects.models import MemberUsage, Quota, Resource
from projects.services import QuotaExceeded


def quota(project, resource="cores"):
    return Quota.objects.get(project=project, resource=resource)


def share(project, user, resource="cores"):
    return MemberUsage.objects.get(quota__project=project, quota__resource=resource, user=user)


def reserve(c, user, amount, resource="cores"):
    return services.quota_reserve(project=c.alpha, user=user, resource=resource, amount=amount)


# --- Moving usage ------------------------------------------------------------------


def test_reserve_moves_reserved_for_project_and_member(cast):
    reserve(cast, cast.amy, 3)
    reserve(cast, cast.alice, 2)

    q = quota(cast.alpha)
    assert (q.used, q.reserved) == (0, 5)
    assert (share(cast.alpha, cast.amy).used, share(cast.alpha, cast.amy).reserved) == (0, 3)
    assert (share(cast.alpha, cast.alice).used, share(cast.alpha, cast.alice).reserved) == (0, 2)
    # Other resources and other projects are untouched.
    assert quota(cast.alpha, "instances").reserved == 0
    assert quota(cast.beta).reserved == 0


def test_commit_turns_reservation_into_usage(cast):
    reserve(cast, cast.amy, 4)
    services.quota_commit(project=cast.alpha, user=cast.amy, resource="cores", amount=3)

    q, s = quota(cast.alpha), share(cast.alpha, cast.amy)
    assert (q.used, q.reserved) == (3, 1)
    assert (s.used, s.reserved) == (3, 1)
    assert q.consumed == 4


def test_release_of_reservation_only_lowers_reserved(cast):
    reserve(cast, cast.amy, 4)
    services.quota_commit(project=cast.alpha, user=cast.amy, resource="cores", amount=2)
    services.quota_release(project=cast.alpha, user=cast.amy, resource="cores", amount=2, reserved=True)

    q, s = quota(cast.alpha), share(cast.alpha, cast.amy)
    assert (q.used, q.reserved) == (2, 0)
    assert (s.used, s.reserved) == (2, 0)


def test_release_of_usage_only_lowers_used(cast):
    reserve(cast, cast.amy, 5)
    services.quota_commit(project=cast.alpha, user=cast.amy, resource="cores", amount=3)
    services.quota_release(project=cast.alpha, user=cast.amy, resource="cores", amount=1, reserved=False)

    q, s = quota(cast.alpha), share(cast.alpha, cast.amy)
    assert (q.used, q.reserved) == (2, 2)
    assert (s.used, s.reserved) == (2, 2)


def test_release_never_goes_below_zero(cast):
    reserve(cast, cast.amy, 1)
    services.quota_release(project=cast.alpha, user=cast.amy, resource="cores", amount=5)
    assert quota(cast.alpha).reserved == 0
    assert share(cast.alpha, cast.amy).reserved == 0


def test_released_capacity_can_be_reserved_again(cast):
    reserve(cast, cast.amy, 10)
    with pytest.raises(QuotaExceeded):
        reserve(cast, cast.alice, 1)
    services.quota_release(project=cast.alpha, user=cast.amy, resource="cores", amount=4)
    reserve(cast, cast.alice, 4)
    assert quota(cast.alpha).reserved == 10


@pytest.mark.parametrize("operation", ["quota_reserve", "quota_commit", "quota_release"])
def test_negative_amount_refused(cast, operation):
    reserve(cast, cast.amy, 2)
    with pytest.raises(ValueError, match="negative"):
        getattr(services, operation)(project=cast.alpha, user=cast.amy, resource="cores", amount=-1)
    q = quota(cast.alpha)
    assert (q.used, q.reserved) == (0, 2)


# --- Limits ---------------------------------------------------------------------


def test_refused_past_the_project_limit(cast):
    reserve(cast, cast.amy, 8)
    with pytest.raises(QuotaExceeded) as info:
        reserve(cast, cast.alice, 3)

    err = info.value
    assert (err.resource, err.scope, err.limit, err.current, err.requested) == ("cores", "project", 10, 8, 3)
    message = str(err)
    for part in ("vCPU cores", "10", "8", "3", "project"):
        assert part in message
    assert err.as_dict()["detail"] == message
    # Nothing moved.
    assert quota(cast.alpha).reserved == 8
    assert not MemberUsage.objects.filter(user=cast.alice, reserved__gt=0).exists()


def test_usage_counts_towards_the_limit_as_well_as_reservations(cast):
    reserve(cast, cast.amy, 6)
    services.quota_commit(project=cast.alpha, user=cast.amy, resource="cores", amount=6)
    reserve(cast, cast.amy, 3)
    with pytest.raises(QuotaExceeded) as info:
        reserve(cast, cast.amy, 2)
    assert info.value.current == 9


def test_exact_fit_is_accepted(cast):
    reserve(cast, cast.amy, 7)
    reserve(cast, cast.alice, 3)
    q = quota(cast.alpha)
    assert q.consumed == q.limit == 10
    assert q.available == 0
    with pytest.raises(QuotaExceeded):
        reserve(cast, cast.alice, 1)


def test_refused_past_the_per_member_limit(cast):
    services.quota_set(project=cast.alpha, resource="cores", limit=10, per_member_limit=4)
    reserve(cast, cast.amy, 4)  # exact fit of the member's cap
    with pytest.raises(QuotaExceeded) as info:
        reserve(cast, cast.amy, 1)

    err = info.value
    assert (err.resource, err.scope, err.limit, err.current, err.requested) == ("cores", "member", 4, 4, 1)
    assert "per-member limit of 4" in str(err)
    # Another member still has room under the same project limit.
    reserve(cast, cast.alice, 4)
    assert quota(cast.alpha).reserved == 8
    assert share(cast.alpha, cast.amy).reserved == 4


def test_project_limit_is_checked_before_the_member_limit(cast):
    services.quota_set(project=cast.alpha, resource="cores", limit=10, per_member_limit=6)
    reserve(cast, cast.alice, 6)
    with pytest.raises(QuotaExceeded) as info:
        reserve(cast, cast.amy, 5)
    assert info.value.scope == "project"


def test_zero_limit_refuses_any_positive_amount(cast):
    assert quota(cast.alpha, "ram_mb").limit == 0
    with pytest.raises(QuotaExceeded) as info:
        reserve(cast, cast.amy, 1, resource="ram_mb")
    assert (info.value.limit, info.value.current) == (0, 0)
    # Asking for nothing fits even a zero limit and changes nothing.
    reserve(cast, cast.amy, 0, resource="ram_mb")
    assert quota(cast.alpha, "ram_mb").reserved == 0


def test_zero_per_member_limit_refuses_the_member(cast):
    services.quota_set(project=cast.alpha, resource="cores", limit=10, per_member_limit=0)
    with pytest.raises(QuotaExceeded) as info:
        reserve(cast, cast.amy, 1)
    assert info.value.scope == "member"


def test_lowering_the_limit_below_use_blocks_new_reservations(cast):
    reserve(cast, cast.amy, 6)
    services.quota_set(project=cast.alpha, resource="cores", limit=4)
    q = quota(cast.alpha)
    assert (q.percent, q.available, q.level) == (100, 0, "danger")
    with pytest.raises(QuotaExceeded):
        reserve(cast, cast.alice, 1)


# --- Derived properties -------------------------------------------------------------


@pytest.mark.parametrize(
    "limit, used, reserved, percent, level, available",
    [
        (0, 0, 0, 0, "success", 0),
        (0, 1, 0, 100, "danger", 0),
        (0, 0, 2, 100, "danger", 0),
        (100, 0, 0, 0, "success", 100),
        (100, 74, 0, 74, "success", 26),
        (100, 50, 25, 75, "warning", 25),
        (100, 89, 0, 89, "warning", 11),
        (100, 90, 0, 90, "danger", 10),
        (3, 1, 1, 67, "success", 1),
        (10, 10, 0, 100, "danger", 0),
        (10, 15, 5, 100, "danger", 0),
    ],
)
def test_percent_level_available(limit, used, reserved, percent, level, available):
    q = Quota(resource="cores", limit=limit, used=used, reserved=reserved)
    assert q.consumed == used + reserved
    assert q.percent == percent
    assert q.level == level
    assert q.available == available


# --- Setting limits -----------------------------------------------------------------


def test_quota_set_changes_limits(cast):
    q = services.quota_set(project=cast.alpha, resource="instances", limit=7, per_member_limit=2)
    assert (q.limit, q.per_member_limit) == (7, 2)
    fresh = quota(cast.alpha, "instances")
    assert (fresh.limit, fresh.per_member_limit) == (7, 2)
    assert Quota.objects.filter(project=cast.alpha).count() == len(Resource.values)


def test_quota_set_refuses_unknown_resource(cast):
    with pytest.raises(ValidationError) as info:
        services.quota_set(project=cast.alpha, resource="gpus", limit=1)
    assert "resource" in info.value.message_dict
    assert not Quota.objects.filter(resource="gpus").exists()


def test_quota_set_refuses_negative_limit(cast):
    with pytest.raises(ValidationError) as info:
        services.quota_set(project=cast.alpha, resource="cores", limit=-1)
    assert "limit" in info.value.message_dict
    assert quota(cast.alpha).limit == 10


def test_quota_form_refuses_per_member_above_limit(cast):
    form = QuotaForm({"limit": 5, "per_member_limit": 6}, instance=quota(cast.alpha))
    assert not form.is_valid()
    assert "per_member_limit" in form.errors
    assert "cannot exceed" in form.errors["per_member_limit"][0]


@pytest.mark.parametrize("per_member", ["5", "0", ""])
def test_quota_form_accepts_per_member_up_to_limit(cast, per_member):
    form = QuotaForm({"limit": 5, "per_member_limit": per_member}, instance=quota(cast.alpha))
    assert form.is_valid(), form.errors
    expected = int(per_member) if per_member else None
    assert form.cleaned_data["per_member_limit"] == expected


def test_quota_form_refuses_negative_numbers(cast):
    form = QuotaForm({"limit": -3, "per_member_limit": -1}, instance=quota(cast.alpha))
    assert not form.is_valid()
    assert {"limit", "per_member_limit"} <= set(form.errors)


# --- Concurrency (PostgreSQL row locks) ------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_concurrent_reservations_never_overbook():
    """Eight threads ask for 3 of 10 cores at once: the row lock lets exactly
    three through, and the totals add up."""
    from tests.conftest import make_user

    users = [make_user(f"racer{i}") for i in range(8)]
    project = services.project_create(slug="race", name="Race", limits={"cores": 10})
    barrier = threading.Barrier(len(users))
    outcomes = []

    def worker(user):
        try:
            barrier.wait()
            services.quota_reserve(project=project, user=user, resource="cores", amount=3)
            outcomes.append("ok")
        except QuotaExceeded:
            outcomes.append("refused")
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert sorted(outcomes) == ["ok"] * 3 + ["refused"] * 5
    q = quota(project)
    assert q.reserved == 9
    assert sum(MemberUsage.objects.filter(quota=q).values_list("reserved", flat=True)) == 9
