from django.conf import settings


def site(request):
    return {
        "SITE_NAME": settings.SITE_NAME,
        "OIDC_ENABLED": settings.OIDC_ENABLED,
        "OIDC_PROVIDER_NAME": settings.OIDC_PROVIDER_NAME,
    }
