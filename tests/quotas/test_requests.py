"""Quota change requests: members ask, staff decide, e-mails go out once,
temporary limits fall back, and drifting counters are recounted."""
from datetime import timedelta

import pytest
from django.core import mail
from django.core.exceptions import PermissionDenied, ValidationError
from django.urls import reverse
from django.utils import timezone

from jobs.models import Job, State
from projects import quota_requests as qr
from projects import services
from projects.models import MemberUsage, Quota, QuotaCorrection, QuotaRequest


def limit(project, resource="cores"):
    return Quota.objects.get(project=project, resource=resource).limit


@pytest.fixture
def asked(cast):
    return qr.quota_request_create(project=cast.alpha, user=cast.amy, resource="cores", requested_limit=32,
                                   justification="Genome assembly needs 32 cores for a month.")


def test_a_member_asks_and_staff_approve(cast, asked, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        decided = qr.quota_request_decide(request=asked, staff=cast.staff, decision="approved", comment="Enjoy")

    assert decided.status == "approved" and decided.approved_limit == 32 and decided.previous_limit == 10
    assert limit(cast.alpha) == 32
    assert len(mail.outbox) == 1  # one message per decision
    message = mail.outbox[0]
    assert sorted(message.to) == sorted([cast.amy.email, cast.alice.email])  # requester + managers
    assert "approved" in message.subject and "to 32" in message.body and "Enjoy" in message.body


def test_partial_approval_grants_another_value_and_caps_the_member_limit(cast, asked,
                                                                         django_capture_on_commit_callbacks):
    services.quota_set(project=cast.alpha, resource="cores", limit=10, per_member_limit=8)
    with django_capture_on_commit_callbacks(execute=True):
        decided = qr.quota_request_decide(request=asked, staff=cast.staff, decision="partial", approved_limit=6)

    quota = Quota.objects.get(project=cast.alpha, resource="cores")
    assert (decided.status, quota.limit, quota.per_member_limit) == ("partial", 6, 6)
    assert "Partially approved" in mail.outbox[0].subject or "partially approved" in mail.outbox[0].subject


def test_denial_needs_a_reason_and_changes_nothing(cast, asked, django_capture_on_commit_callbacks):
    with pytest.raises(ValidationError) as info:
        qr.quota_request_decide(request=asked, staff=cast.staff, decision="denied")
    assert "comment" in info.value.message_dict
    with django_capture_on_commit_callbacks(execute=True):
        qr.quota_request_decide(request=asked, staff=cast.staff, decision="denied", comment="Budget is spent.")

    assert limit(cast.alpha) == 10
    assert "Budget is spent." in mail.outbox[0].body
    with pytest.raises(ValidationError, match="already denied"):
        qr.quota_request_decide(request=asked, staff=cast.staff, decision="approved")


def test_only_staff_decide_and_only_members_ask(cast, asked):
    with pytest.raises(PermissionDenied):
        qr.quota_request_decide(request=asked, staff=cast.alice, decision="approved")
    with pytest.raises(PermissionDenied):
        qr.quota_request_create(project=cast.alpha, user=cast.bob, resource="cores", requested_limit=5,
                                justification="x")
    with pytest.raises(ValidationError) as info:
        qr.quota_request_create(project=cast.alpha, user=cast.alice, resource="cores", requested_limit=64,
                                justification="again")
    assert "already an open request" in str(info.value)


def test_staff_editing_a_quota_sends_no_mail(cast, client_for, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        client_for(cast.staff).post(reverse("projects:quota-edit", args=["alpha", "cores"]), {"limit": 50})

    assert limit(cast.alpha) == 50
    assert mail.outbox == []


def test_temporary_limit_warns_then_falls_back(cast, django_capture_on_commit_callbacks, settings):
    settings.QUOTA_EXPIRY_WARNING_DAYS = 3
    today = timezone.localdate()
    request = qr.quota_request_create(project=cast.alpha, user=cast.alice, resource="cores", requested_limit=40,
                                      justification="Conference deadline", end_date=today + timedelta(days=10))
    qr.quota_request_decide(request=request, staff=cast.staff, decision="approved")

    with django_capture_on_commit_callbacks(execute=True):
        assert qr.quota_limits_expire(today=today + timedelta(days=5)) == (0, 0)  # too early to warn
        assert qr.quota_limits_expire(today=today + timedelta(days=8)) == (1, 0)
        assert qr.quota_limits_expire(today=today + timedelta(days=9)) == (0, 0)  # warned once only
    assert len(mail.outbox) == 1 and "ends on" in mail.outbox[0].subject
    assert limit(cast.alpha) == 40

    with django_capture_on_commit_callbacks(execute=True):
        assert qr.quota_limits_expire(today=today + timedelta(days=10)) == (0, 1)
    assert limit(cast.alpha) == 10
    assert "ended" in mail.outbox[1].subject
    assert qr.quota_limits_expire(today=today + timedelta(days=11)) == (0, 0)


def test_expiry_keeps_a_limit_staff_changed_since(cast):
    today = timezone.localdate()
    request = qr.quota_request_create(project=cast.alpha, user=cast.alice, resource="cores", requested_limit=40,
                                      justification="x", end_date=today + timedelta(days=2))
    qr.quota_request_decide(request=request, staff=cast.staff, decision="approved")
    services.quota_set(project=cast.alpha, resource="cores", limit=64, actor=cast.staff)

    qr.quota_limits_expire(today=today + timedelta(days=2))

    assert limit(cast.alpha) == 64


def test_recount_reports_and_corrects_drift(cast):
    cluster = __import__("clusters.models", fromlist=["SlurmCluster"]).SlurmCluster.objects.create(
        name="c", ssh_user="s", ssh_private_key="k", known_hosts="h")
    common = dict(project=cast.alpha, cluster=cluster, name="j", script="true")
    Job.objects.create(owner=cast.alice, state=State.COMPLETED, used_core_hours=2.2, **common)  # counts 3
    Job.objects.create(owner=cast.amy, state=State.RUNNING, reserved_core_hours=5, **common)
    Quota.objects.filter(project=cast.alpha, resource="core_hours").update(used=7, reserved=0)  # drifted

    corrections = qr.quota_recount(project=cast.alpha)

    quota = Quota.objects.get(project=cast.alpha, resource="core_hours")
    assert (quota.used, quota.reserved) == (3, 5)
    assert {(c.user_id, c.field, c.stored, c.recounted) for c in corrections} >= {
        (None, "used", 7, 3), (None, "reserved", 0, 5)}
    shares = dict(MemberUsage.objects.filter(quota=quota).values_list("user__username", "used"))
    assert shares["alice"] == 3
    assert QuotaCorrection.objects.count() == len(corrections)
    assert qr.quota_recount(project=cast.alpha) == []  # nothing left to correct


def test_request_pages(cast, client_for, django_capture_on_commit_callbacks):
    amy = client_for(cast.amy)
    page = amy.get(reverse("projects:quota-request-new", args=["alpha"]))
    assert page.status_code == 200 and "Current limits" in page.content.decode()
    bad = amy.post(reverse("projects:quota-request-new", args=["alpha"]),
                   {"resource": "cores", "requested_limit": "10", "justification": "same"})
    assert "already 10" in bad.content.decode()
    ok = amy.post(reverse("projects:quota-request-new", args=["alpha"]),
                  {"resource": "cores", "requested_limit": "20", "justification": "More samples"})
    assert ok.status_code == 302
    request = QuotaRequest.objects.get()
    assert client_for(cast.mallory).get(reverse("projects:quota-request-new", args=["alpha"])).status_code == 404
    assert client_for(cast.bob).get(reverse("projects:quota-request-new", args=["alpha"])).status_code == 404
    detail = client_for(cast.alice).get(reverse("projects:detail", args=["alpha"])).content.decode()
    assert "vCPU cores → 20" in detail and "Pending" in detail

    assert client_for(cast.alice).get(reverse("projects:quota-requests")).status_code in (302, 403)
    staff = client_for(cast.staff)
    listing = staff.get(reverse("projects:quota-requests"))
    assert "More samples" in listing.content.decode()
    with django_capture_on_commit_callbacks(execute=True):
        staff.post(reverse("projects:quota-request-decide", args=[request.pk]),
                   {"decision": "partial", "approved_limit": "15", "comment": "Half now"})
    request.refresh_from_db()
    assert (request.status, limit(cast.alpha)) == ("partial", 15)
    assert len(mail.outbox) == 1
