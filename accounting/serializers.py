from rest_framework import serializers

from . import reports


class UsageQuerySerializer(serializers.Serializer):
    """The query of GET /api/v1/usage/ (every field optional)."""

    project = serializers.SlugField(required=False, help_text="Project slug; without it, your own usage everywhere.")
    start = serializers.DateField(required=False, help_text="First day (UTC), default 29 days before the end.")
    end = serializers.DateField(required=False, help_text="Last day (UTC, included), default today.")
    group_by = serializers.ChoiceField(choices=reports.GROUP_BY, default="day")
    cluster = serializers.SlugField(required=False, help_text="Only this cluster (its name).")

    def validate(self, attrs):
        params = {k: attrs[k].isoformat() for k in ("start", "end") if k in attrs}
        try:
            attrs["range"] = reports.parse_range(params, period_field=None)
        except reports.ParamError as e:
            raise serializers.ValidationError(e.errors) from None
        return attrs


class UsageRowSerializer(serializers.Serializer):
    key = serializers.CharField(allow_null=True, help_text="User name, ISO day, cluster name or resource; null for "
                                                           "usage no portal user could be mapped to.")
    resource = serializers.ChoiceField(choices=[r.value for r in reports.RESOURCES])
    amount = serializers.FloatField(help_text="Core-hours, GPU-hours or a number of jobs (2 decimals).")
