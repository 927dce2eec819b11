from django.apps import AppConfig


class TestAppConfig(AppConfig):
    """The tests' own app: installed only with ECHO_TEST_APP=1 (wsproject/settings.py)."""

    name = "tests.testapp"
    label = "testapp"
    default_auto_field = "django.db.models.BigAutoField"
