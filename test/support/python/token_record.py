"""
What the Python authorization servers of the interop tests record at their token endpoint (GET /_record serves
it): every refresh token presented, requests by grant type, and every OAuth error answered. Shared by
django-oauth-toolkit/server.py and authlib/server.py; the server's own answer goes out unchanged.
"""
import io
import json
import threading
import urllib.parse


def new_record(**extra):
    """An empty record (with `extra` fields of the server's own), and the lock that guards it."""
    return {"refreshTokensPresented": [], "errors": {}, "byGrant": {}, **extra}, threading.Lock()


def recorded_token_request(app, environ, start_response, record, lock):
    """Runs the WSGI `app` on a token request, noting what it was sent and the OAuth error it answered."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    raw = environ["wsgi.input"].read(length)
    environ["wsgi.input"] = io.BytesIO(raw)
    form = urllib.parse.parse_qs(raw.decode("utf-8", "replace"))
    grant = (form.get("grant_type") or [""])[0]
    with lock:
        record["byGrant"][grant] = record["byGrant"].get(grant, 0) + 1
        if grant == "refresh_token":
            record["refreshTokensPresented"].extend(form.get("refresh_token", []))
    chunks = list(app(environ, start_response))
    try:
        error = json.loads(b"".join(chunks)).get("error")
    except Exception:
        error = None
    if isinstance(error, str):
        with lock:
            record["errors"][error] = record["errors"].get(error, 0) + 1
    return chunks


def serve_record(start_response, record, lock):
    """The answer to GET /_record: the record as JSON."""
    with lock:
        body = json.dumps(record).encode()
    start_response("200 OK", [("content-type", "application/json"), ("content-length", str(len(body)))])
    return [body]
