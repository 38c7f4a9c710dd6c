"""GET /api/v1/usage/: usage aggregates from the DailyUsage (Slurm) and
CloudDailyUsage (VM) rollups.

Who sees what: with ?project=, a project the caller cannot see is a 404;
its managers and the staff get every row of the project, a plain member
only their own (their jobs, the servers and volumes they own). Without
?project=, everyone gets their own usage on every project.

?cluster= keeps only the Slurm usage of that cluster, ?cloud= only the VM
usage of that cloud; both together keep both. With group_by=cluster, VM
usage is keyed "cloud:<cloud name>"."""
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from clusters.models import Cloud, SlurmCluster
from projects import selectors

from . import reports
from .models import CloudDailyUsage, DailyUsage
from .serializers import UsageQuerySerializer as BaseQuerySerializer, UsageRowSerializer as BaseRowSerializer


class UsageQuerySerializer(BaseQuerySerializer):
    """The query of GET /api/v1/usage/ (every field optional)."""

    cloud = serializers.SlugField(required=False, help_text="Only VM usage on this cloud (its name).")


class UsageRowSerializer(BaseRowSerializer):
    key = serializers.CharField(allow_null=True, help_text="User name, ISO day, cluster name (cloud:<name> for a "
                                                           "cloud) or resource; null for usage no portal user could "
                                                           "be mapped to.")
    resource = serializers.ChoiceField(choices=[r.value for r in reports.ALL_RESOURCES])
    amount = serializers.FloatField(help_text="Core-hours, GPU-hours, a number of jobs, VM core-hours, RAM-GB-hours, "
                                              "disk-GB-hours or volume-GB-hours (2 decimals).")


class UsageView(APIView):
    @extend_schema(
        parameters=[UsageQuerySerializer],
        responses=UsageRowSerializer(many=True),
        description=__doc__,
    )
    def get(self, request):
        query = UsageQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        params = query.validated_data
        user = request.user
        if "project" in params:
            project = selectors.project_for(user, params["project"])  # 404 for non-members
            qs = DailyUsage.objects.filter(project=project)
            vm_qs = CloudDailyUsage.objects.filter(project=project)
            if not selectors.can_manage(user, project):
                qs, vm_qs = qs.filter(user=user), vm_qs.filter(user=user)
        else:
            qs = DailyUsage.objects.filter(user=user)
            vm_qs = CloudDailyUsage.objects.filter(user=user)
        if "cluster" in params:
            cluster = SlurmCluster.objects.filter(name=params["cluster"]).first()
            if cluster is None:
                raise ValidationError({"cluster": [f"No cluster named {params['cluster']!r}."]})
            qs = qs.filter(cluster=cluster)
        if "cloud" in params:
            cloud = Cloud.objects.filter(name=params["cloud"]).first()
            if cloud is None:
                raise ValidationError({"cloud": [f"No cloud named {params['cloud']!r}."]})
            vm_qs = vm_qs.filter(cloud=cloud)
        if "cluster" in params and "cloud" not in params:
            vm_qs = None  # a cluster asked for: Slurm usage only
        elif "cloud" in params and "cluster" not in params:
            qs = None  # a cloud asked for: VM usage only
        rows = reports.usage_aggregates(qs, params["range"], params["group_by"], vm_qs=vm_qs)
        return Response(UsageRowSerializer(rows, many=True).data)
