"""API glue: error format and the /me endpoint."""
from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework.views import exception_handler as drf_exception_handler

from clusters.vms import RequestRefused
from projects.services import QuotaExceeded


def exception_handler(exc, context):
    """Domain errors become 400/409 JSON naming the field or resource,
    never a 500."""
    if isinstance(exc, DjangoValidationError):
        if hasattr(exc, "message_dict"):
            data = exc.message_dict
        else:
            data = {"detail": exc.messages}
        return Response(data, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, QuotaExceeded):
        return Response({"quota": exc.as_dict()}, status=status.HTTP_409_CONFLICT)
    if isinstance(exc, RequestRefused):  # an action the record's state does not allow
        return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
    return drf_exception_handler(exc, context)


class MembershipBriefSerializer(serializers.Serializer):
    project = serializers.CharField(source="project.slug")
    project_name = serializers.CharField(source="project.name")
    role = serializers.CharField()


class MeSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    username = serializers.CharField()
    email = serializers.EmailField()
    first_name = serializers.CharField()
    last_name = serializers.CharField()
    is_staff = serializers.BooleanField()
    memberships = MembershipBriefSerializer(many=True)


class MeView(APIView):
    @extend_schema(responses=MeSerializer, summary="The signed-in user and their project memberships")
    def get(self, request):
        user = request.user
        data = MeSerializer(
            {
                "id": user.pk,
                "username": user.username,
                "email": user.email,
                "first_name": user.first_name,
                "last_name": user.last_name,
                "is_staff": user.is_staff,
                "memberships": user.memberships.select_related("project").order_by("project__slug"),
            }
        ).data
        return Response(data)
