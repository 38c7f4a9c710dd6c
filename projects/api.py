from django_filters import rest_framework as filters
from rest_framework import viewsets

from . import selectors
from .models import Membership, Project
from .serializers import ProjectDetailSerializer, ProjectListSerializer


class ProjectFilter(filters.FilterSet):
    class Meta:
        model = Project
        fields = ["status"]


class ProjectViewSet(viewsets.ReadOnlyModelViewSet):
    """Projects the caller is a member of (staff: all), with members and quotas."""

    lookup_field = "slug"
    filterset_class = ProjectFilter
    search_fields = ["name", "slug", "description"]
    ordering_fields = ["name", "slug", "created", "status"]
    ordering = ["name"]

    def get_queryset(self):
        qs = selectors.projects_visible_to(self.request.user)
        if self.action == "retrieve":
            qs = qs.prefetch_related("quotas", "memberships__user")
        return qs

    def get_serializer_class(self):
        return ProjectDetailSerializer if self.action == "retrieve" else ProjectListSerializer

    def get_serializer_context(self):
        context = super().get_serializer_context()
        user = getattr(self.request, "user", None)
        if user is not None and user.is_authenticated:
            context["roles"] = dict(Membership.objects.filter(user=user).values_list("project_id", "role"))
        return context
