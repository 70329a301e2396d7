"""
Django OAuth Toolkit (the authorization server of many Django sites) on a free loopback port, for the
client-side tests in test/django-oauth-toolkit.test.ts. One process, an SQLite database in a temporary
directory, the clients and users given as JSON on stdin. It prints `READY <port>` once it listens.

A thin WSGI wrapper records what the tests check the server for: every refresh token presented at the token
endpoint and every OAuth error answered (GET /_record). Nothing else is changed: DOT answers as it does.
"""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
from token_record import new_record, recorded_token_request, serve_record  # noqa: E402

config = json.loads(sys.stdin.read())
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tw_dot_settings")

from django.conf import settings  # noqa: E402

settings.configure(
    DEBUG=False,
    SECRET_KEY="tokenwarden-test-only",
    ALLOWED_HOSTS=["*"],
    USE_TZ=True,
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=["django.contrib.auth", "django.contrib.contenttypes", "oauth2_provider"],
    MIDDLEWARE=[],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": config["database"]}},
    DEFAULT_AUTO_FIELD="django.db.models.AutoField",
    LOGGING_CONFIG=None,
    OAUTH2_PROVIDER={
        "ACCESS_TOKEN_EXPIRE_SECONDS": config.get("accessTokenTtl", 60),
        "ROTATE_REFRESH_TOKEN": config.get("rotateRefreshTokens", True),
        "SCOPES": {"read": "read", "write": "write", "introspection": "introspection", "openid": "openid"},
        "DEFAULT_SCOPES": ["read"],
        "OIDC_ENABLED": True,
        "OIDC_RSA_PRIVATE_KEY": config["rsaPrivateKey"],
        "PKCE_REQUIRED": False,
    },
)

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
from django.urls import include, path  # noqa: E402

urlpatterns = [path("o/", include("oauth2_provider.urls", namespace="oauth2_provider"))]

call_command("migrate", verbosity=0, interactive=False)

from django.contrib.auth import get_user_model  # noqa: E402
from oauth2_provider.models import get_application_model  # noqa: E402

Application = get_application_model()
for user in config.get("users", []):
    get_user_model().objects.create_user(username=user["username"], password=user["password"])
for client in config["clients"]:
    Application.objects.create(
        name=client["clientId"],
        client_id=client["clientId"],
        client_secret=client["clientSecret"],
        client_type=Application.CLIENT_CONFIDENTIAL,
        authorization_grant_type=client["grant"],
        algorithm=client.get("algorithm", ""),
        redirect_uris="",
    )

from django.core.handlers.wsgi import WSGIHandler  # noqa: E402
from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler  # noqa: E402

record, lock = new_record()
django_app = WSGIHandler()


def app(environ, start_response):
    if environ.get("PATH_INFO") == "/_record":
        return serve_record(start_response, record, lock)
    if environ.get("PATH_INFO") == "/o/token/" and environ.get("REQUEST_METHOD") == "POST":
        return recorded_token_request(django_app, environ, start_response, record, lock)
    return django_app(environ, start_response)


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass


httpd = ThreadedWSGIServer(("127.0.0.1", 0), QuietHandler)
httpd.set_app(app)
print(f"READY {httpd.server_address[1]}", flush=True)
httpd.serve_forever()
