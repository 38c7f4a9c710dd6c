"""The accounting admin: read-only lists, search and detail pages load."""
import pytest
from django.urls import reverse

from accounting import services
from accounting.models import DailyUsage, IngestWatermark, UsageRecord

from .conftest import line

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("model", [UsageRecord, IngestWatermark, DailyUsage])
def test_pages_load_and_nothing_is_editable(offline, client_for, model):
    services.ingest_lines(offline.cluster, [line("1", user="ada"), line("2", user="zoe", account="nope")])
    client = client_for(offline.staff)
    name = f"admin:accounting_{model._meta.model_name}"
    obj = model.objects.order_by("pk").first()

    assert client.get(reverse(f"{name}_changelist")).status_code == 200
    assert client.get(reverse(f"{name}_changelist"), {"q": "ada"}).status_code == 200
    page = client.get(reverse(f"{name}_change", args=[obj.pk]))
    assert page.status_code == 200 and b'name="_save"' not in page.content
    assert client.get(reverse(f"{name}_add")).status_code == 403
    assert client.post(reverse(f"{name}_delete", args=[obj.pk]), {"post": "yes"}).status_code == 403
    assert model.objects.filter(pk=obj.pk).exists()
