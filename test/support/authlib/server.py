"""
Authlib's authorization server (Flask integration) on a free loopback port, for the client-side tests in
test/authlib.test.ts. One threaded process, tokens in plain dicts, the clients, keys and users given as JSON
on stdin. It prints `READY <port>` once it listens; the issuer is `http://127.0.0.1:<port>`.

Grants: client credentials, password (a login with a refresh token), refresh token with rotation (the spent
refresh token is revoked), JWT bearer (RFC 7523 §2.1, the assertion's `iss` a client with registered keys;
Authlib checks only that the assertion has an `aud`, so this one says which: the issuer or the token endpoint).
Client authentication: client_secret_basic, client_secret_post, client_secret_jwt and private_key_jwt
(Authlib's JWTBearerClientAssertion, whose audience is the token endpoint). Endpoints: RFC 8414 metadata,
token, RFC 7662 introspection, RFC 7009 revocation. The storage methods Authlib asks the developer for are
written as its SQLAlchemy mixins write them (a token is revoked once either of its two tokens is), but for
secrets compared as bytes: the mixin's str comparison raises on a non-ASCII secret.

A thin WSGI wrapper records what the tests check the server for: every refresh token presented at the token
endpoint, every OAuth error answered there, grants, and the well-known addresses asked for (GET /_record).
Nothing else is changed: Authlib answers as it does.
"""
import base64
import json
import logging
import os
import secrets
import sys
import time

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.jose import JsonWebKey
from authlib.oauth2.rfc6749 import ClientMixin, InvalidClientError, InvalidGrantError, TokenMixin, grants
from authlib.oauth2.rfc6749.util import list_to_scope, scope_to_list
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion, JWTBearerGrant
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata
from flask import Flask, jsonify
from werkzeug.serving import make_server

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
from token_record import new_record, recorded_token_request, serve_record  # noqa: E402

config = json.loads(sys.stdin.read())
# Authlib's switch for development over http (the metadata checks want https, but for http://localhost:).
os.environ["AUTHLIB_INSECURE_TRANSPORT"] = "1"
logging.getLogger("werkzeug").setLevel(logging.ERROR)

TTL = config.get("accessTokenTtl", 60)
SCOPES = ["read", "write"]
JWT_BEARER = JWTBearerGrant.GRANT_TYPE
SECRET_METHODS = ["client_secret_basic", "client_secret_post"]
JWT_METHODS = ["client_secret_jwt", "private_key_jwt"]

users = {u["username"]: u["password"] for u in config.get("users", [])}
by_access = {}
by_refresh = {}
used_jti = set()


class User:
    def __init__(self, username):
        self.username = username

    def get_user_id(self):
        return self.username


class Client(ClientMixin):
    def __init__(self, c):
        self.client_id = c["clientId"]
        self.client_secret = c.get("clientSecret")
        self.grant_types = c["grants"]
        self.auth_methods = c.get("authMethods", SECRET_METHODS)
        self.scope = c.get("scope", "read write")
        self.jwks = c.get("jwks")
        self.may_introspect = c.get("introspect", False)

    def get_client_id(self):
        return self.client_id

    def get_default_redirect_uri(self):
        return None

    def get_allowed_scope(self, scope):
        if not scope:
            return ""
        allowed = set(scope_to_list(self.scope))
        return list_to_scope([s for s in scope.split() if s in allowed])

    def check_redirect_uri(self, redirect_uri):
        return False

    def check_client_secret(self, client_secret):
        # As bytes: Authlib's SQLAlchemy mixin compares the str, and compare_digest raises on non-ASCII (a 500).
        if self.client_secret is None:
            return False
        return secrets.compare_digest(self.client_secret.encode(), client_secret.encode())

    def check_endpoint_auth_method(self, method, endpoint):
        return method in self.auth_methods

    def check_response_type(self, response_type):
        return False

    def check_grant_type(self, grant_type):
        return grant_type in self.grant_types


clients = {c["clientId"]: Client(c) for c in config["clients"]}


class Token(TokenMixin):
    def __init__(self, token, client, user):
        self.client_id = client.client_id
        self.username = user.username if user else None
        self.token_type = token["token_type"]
        self.access_token = token["access_token"]
        self.refresh_token = token.get("refresh_token")
        self.scope = token.get("scope", "")
        self.expires_in = token.get("expires_in", 0)
        self.issued_at = int(time.time())
        self.access_token_revoked_at = 0
        self.refresh_token_revoked_at = 0

    def check_client(self, client):
        return self.client_id == client.get_client_id()

    def get_scope(self):
        return self.scope

    def get_expires_in(self):
        return self.expires_in

    def is_revoked(self):
        return bool(self.access_token_revoked_at or self.refresh_token_revoked_at)

    def is_expired(self):
        return bool(self.expires_in) and self.issued_at + self.expires_in < time.time()


def query_client(client_id):
    return clients.get(client_id)


def save_token(token, request):
    stored = Token(token, request.client, request.user)
    with lock:
        by_access[stored.access_token] = stored
        if stored.refresh_token:
            by_refresh[stored.refresh_token] = stored


def query_token(token, hint):
    with lock:
        if hint == "access_token":
            return by_access.get(token)
        if hint == "refresh_token":
            return by_refresh.get(token)
        return by_access.get(token) or by_refresh.get(token)


class ClientCredentialsGrant(grants.ClientCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = SECRET_METHODS + JWT_METHODS


class PasswordGrant(grants.ResourceOwnerPasswordCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = SECRET_METHODS

    def authenticate_user(self, username, password):
        expected = users.get(username)
        if expected is not None and secrets.compare_digest(expected.encode(), password.encode()):
            return User(username)


class RefreshTokenGrant(grants.RefreshTokenGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = SECRET_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = True

    def authenticate_refresh_token(self, refresh_token):
        token = query_token(refresh_token, "refresh_token")
        if token and not token.refresh_token_revoked_at:
            return token

    def authenticate_user(self, credential):
        return User(credential.username) if credential.username else None

    def revoke_old_credential(self, credential):
        credential.refresh_token_revoked_at = int(time.time())


class JWTBearer(JWTBearerGrant):
    def resolve_issuer_client(self, issuer):
        client = clients.get(issuer)
        if client is None or not client.jwks:
            raise InvalidGrantError(description='Unknown "iss" in assertion')
        return client

    def resolve_client_key(self, client, headers, payload):
        for jwk in client.jwks:
            if jwk.get("kid") == headers.get("kid"):
                return JsonWebKey.import_key(jwk)
        raise InvalidGrantError(description='Unknown "kid" in assertion')

    def authenticate_user(self, subject):
        return User(subject) if subject in users else None

    def has_granted_permission(self, client, user):
        return True


class ClientAssertion(JWTBearerClientAssertion):
    """
    Authlib has one JWT client assertion class; registered twice, once per method name, each taking the
    assertions of its algorithms (HMAC with the secret, or a signature by the client's registered key).
    """

    def __init__(self, token_url, method):
        super().__init__(token_url)
        self.CLIENT_AUTH_METHOD = method

    def __call__(self, query_client, request):
        assertion = request.form.get("client_assertion")
        hmac = self.CLIENT_AUTH_METHOD == "client_secret_jwt"
        if assertion and assertion_alg(assertion).startswith("HS") != hmac:
            return None
        return super().__call__(query_client, request)

    def validate_jti(self, claims, jti):
        with lock:
            if (claims["sub"], jti) in used_jti:
                return False
            used_jti.add((claims["sub"], jti))
            return True

    def resolve_client_public_key(self, client, headers):
        if self.CLIENT_AUTH_METHOD == "client_secret_jwt":
            if not client.client_secret:
                raise InvalidClientError()
            return client.client_secret
        if not client.jwks:
            raise InvalidClientError()
        return JsonWebKey.import_key(client.jwks[0])


def assertion_alg(assertion):
    try:
        header = assertion.split(".")[0]
        return str(json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4))).get("alg", ""))
    except Exception:
        return ""


class Introspection(IntrospectionEndpoint):
    CLIENT_AUTH_METHODS = SECRET_METHODS

    def query_token(self, token, token_type_hint):
        return query_token(token, token_type_hint)

    def check_permission(self, token, client, request):
        return client.may_introspect

    def introspect_token(self, token):
        return {
            "active": True,
            "client_id": token.client_id,
            "token_type": token.token_type,
            "username": token.username,
            "scope": token.get_scope(),
            "sub": token.username,
            "aud": token.client_id,
            "iss": issuer,
            "exp": token.issued_at + token.expires_in,
            "iat": token.issued_at,
        }


class Revocation(RevocationEndpoint):
    CLIENT_AUTH_METHODS = SECRET_METHODS

    def query_token(self, token, token_type_hint):
        return query_token(token, token_type_hint)

    def revoke_token(self, token, request):
        now = int(time.time())
        token.access_token_revoked_at = now
        if request.form.get("token_type_hint") != "access_token":
            token.refresh_token_revoked_at = now


app = Flask(__name__)
app.config.update(
    OAUTH2_SCOPES_SUPPORTED=SCOPES,
    OAUTH2_REFRESH_TOKEN_GENERATOR=True,
    OAUTH2_TOKEN_EXPIRES_IN={g: TTL for g in ["client_credentials", "password", "refresh_token", JWT_BEARER]},
)
server = AuthorizationServer(app, query_client=query_client, save_token=save_token)
httpd = make_server("127.0.0.1", 0, None, threaded=True)
issuer = f"http://127.0.0.1:{httpd.server_port}"
token_endpoint = f"{issuer}/oauth/token"

# The assertion of the JWT bearer grant names this server: its issuer or its token endpoint.
JWTBearer.CLAIMS_OPTIONS = {
    **JWTBearerGrant.CLAIMS_OPTIONS,
    "aud": {"essential": True, "values": [issuer, token_endpoint]},
}
server.register_grant(ClientCredentialsGrant)
server.register_grant(PasswordGrant)
server.register_grant(RefreshTokenGrant)
server.register_grant(JWTBearer)
for method in JWT_METHODS:
    server.register_client_auth_method(method, ClientAssertion(token_endpoint, method))
server.register_endpoint(Introspection)
server.register_endpoint(Revocation)

metadata = AuthorizationServerMetadata(
    {
        "issuer": issuer,
        "token_endpoint": token_endpoint,
        "introspection_endpoint": f"{issuer}/oauth/introspect",
        "revocation_endpoint": f"{issuer}/oauth/revoke",
        "scopes_supported": SCOPES,
        "response_types_supported": [],
        "grant_types_supported": ["client_credentials", "password", "refresh_token", JWT_BEARER],
        "token_endpoint_auth_methods_supported": SECRET_METHODS + JWT_METHODS,
        "token_endpoint_auth_signing_alg_values_supported": ["HS256", "RS256", "ES256"],
        "introspection_endpoint_auth_methods_supported": SECRET_METHODS,
        "revocation_endpoint_auth_methods_supported": SECRET_METHODS,
    }
)
# Authlib's checks of each member but one: it wants a response type, and this server has no authorization
# endpoint (no grant here uses one), so it names none.
for key in AuthorizationServerMetadata.REGISTRY_KEYS:
    if key != "response_types_supported":
        getattr(metadata, f"validate_{key}")()


@app.get("/.well-known/oauth-authorization-server")
def well_known():
    return jsonify(dict(metadata))


@app.post("/oauth/token")
def issue_token():
    return server.create_token_response()


@app.post("/oauth/introspect")
def introspect():
    return server.create_endpoint_response(Introspection.ENDPOINT_NAME)


@app.post("/oauth/revoke")
def revoke():
    return server.create_endpoint_response(Revocation.ENDPOINT_NAME)


record, lock = new_record(wellKnown=[])


def recording(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path == "/_record":
        return serve_record(start_response, record, lock)
    if path.startswith("/.well-known/"):

        def noting(status, headers, exc_info=None):
            with lock:
                record["wellKnown"].append(f"{path} {status.split()[0]}")
            return start_response(status, headers, exc_info)

        return app(environ, noting)
    if path == "/oauth/token" and environ.get("REQUEST_METHOD") == "POST":
        return recorded_token_request(app, environ, start_response, record, lock)
    return app(environ, start_response)


httpd.app = recording
print(f"READY {httpd.server_port}", flush=True)
httpd.serve_forever()
