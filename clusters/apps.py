from django.apps import AppConfig


class ClustersConfig(AppConfig):
    default_auto_field = 'django.db.models.BigAutoField'
    name = 'clusters'

    def ready(self):
        from .vms import register_recounters

        register_recounters()
