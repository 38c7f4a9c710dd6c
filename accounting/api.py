"""GET /api/v1/usage/: usage aggregates from the DailyUsage rollup.

Who sees what: with ?project=, a project the caller cannot see is a 404;
its managers and the staff get every row of the project, a plain member
only their own. Without ?project=, everyone gets their own usage on every
project."""
from drf_spectacular.utils import extend_schema
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from clusters.models import SlurmCluster
from projects import selectors

from . import reports
from .models import DailyUsage
from .serializers import UsageQuerySerializer, UsageRowSerializer


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
            if not selectors.can_manage(user, project):
                qs = qs.filter(user=user)
        else:
            qs = DailyUsage.objects.filter(user=user)
        if "cluster" in params:
            cluster = SlurmCluster.objects.filter(name=params["cluster"]).first()
            if cluster is None:
                raise ValidationError({"cluster": [f"No cluster named {params['cluster']!r}."]})
            qs = qs.filter(cluster=cluster)
        rows = reports.usage_aggregates(qs, params["range"], params["group_by"])
        return Response(UsageRowSerializer(rows, many=True).data)
