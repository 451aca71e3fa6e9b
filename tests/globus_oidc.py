"""A local stand-in for Globus Auth (OpenID Connect) and the Globus Groups API, on loopback.

A real HTTP server in a thread (so the browser tests' live server reaches it too): discovery,
authorize (approves at once, as ``provider.identity``), token (client_secret_basic; a code works
once and only while fresh), userinfo, JWKS, revocation, and ``GET /v2/groups/my_groups`` whose
answer has the shape of globus_sdk.testing's registered ``get_my_groups`` response. ID tokens are
RS256 JWTs signed with a key made per provider (PyJWT + cryptography). No network beyond 127.0.0.1.
"""
from __future__ import annotations

import base64
import copy
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

CLIENT_ID = "5c3a7f0e-0b1d-4f7e-9a52-2f0c7e1d3b11"
CLIENT_SECRET = "client-secret-never-shown-0123456789"
SCIENCE_GROUP = "a1b2c3d4-0000-4000-8000-00000000000a"
OPERATORS_GROUP = "a1b2c3d4-0000-4000-8000-00000000000b"
OTHER_GROUP = "a1b2c3d4-0000-4000-8000-00000000000c"


@dataclass
class Identity:
    username: str = "han@colorado.edu"
    sub: str = "3b7c1f2a-6d1e-4a8b-9f00-1c2d3e4f5a6b"
    name: str = "Han Solo"
    email: str = "han@colorado.edu"
    groups: list[str] = field(default_factory=lambda: [SCIENCE_GROUP])


class LocalGlobus:
    def __init__(self):
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = secrets.token_hex(4)
        self.identity = Identity()
        self.codes: dict[str, dict] = {}
        self.tokens: dict[str, dict] = {}  # access/refresh token -> what it is
        self.revoked: list[str] = []
        self.groups_status = 200
        self.code_lifetime = 60.0
        self.requests: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def reset(self):
        self.identity = Identity()
        self.codes.clear()
        self.tokens.clear()
        self.revoked.clear()
        self.requests.clear()
        self.groups_status = 200
        self.code_lifetime = 60.0

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def issued(self, kind: str | None = None) -> list[str]:
        return [t for t, info in self.tokens.items() if kind is None or info["kind"] == kind]

    # --- answers ---------------------------------------------------------------------
    def discovery(self) -> dict:
        u = self.url
        return {
            "issuer": u, "authorization_endpoint": f"{u}/v2/oauth2/authorize", "token_endpoint": f"{u}/v2/oauth2/token",
            "userinfo_endpoint": f"{u}/v2/oauth2/userinfo", "jwks_uri": f"{u}/jwk.json",
            "revocation_endpoint": f"{u}/v2/oauth2/token/revoke", "response_types_supported": ["code"],
            "subject_types_supported": ["public"], "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic"],
            "scopes_supported": ["openid", "profile", "email"],
        }

    def jwks(self) -> dict:
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        return {"keys": [{**public, "kid": self.kid, "alg": "RS256", "use": "sig"}]}

    def authorize(self, query: dict) -> str:
        code = secrets.token_urlsafe(16)
        self.codes[code] = {"identity": copy.deepcopy(self.identity), "nonce": query.get("nonce"),
                            "redirect_uri": query["redirect_uri"], "at": time.time(), "scope": query.get("scope", "")}
        return f"{query['redirect_uri']}?{urlencode({'code': code, 'state': query.get('state', '')})}"

    def token(self, form: dict, auth: str) -> tuple[int, dict]:
        expected = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        if auth != expected:
            return 401, {"error": "invalid_client"}
        grant = self.codes.pop(form.get("code", ""), None)
        if form.get("grant_type") != "authorization_code" or grant is None:
            return 400, {"error": "invalid_grant", "error_description": "unknown or used code"}
        if time.time() - grant["at"] > self.code_lifetime or grant["redirect_uri"] != form.get("redirect_uri"):
            return 400, {"error": "invalid_grant", "error_description": "expired code"}
        who: Identity = grant["identity"]
        now = int(time.time())
        access, refresh = "auth-at-" + secrets.token_urlsafe(20), "auth-rt-" + secrets.token_urlsafe(20)
        groups_at, groups_rt = "groups-at-" + secrets.token_urlsafe(20), "groups-rt-" + secrets.token_urlsafe(20)
        self.tokens.update({access: {"kind": "access", "who": who}, refresh: {"kind": "refresh", "who": who},
                            groups_at: {"kind": "groups", "who": who}, groups_rt: {"kind": "refresh", "who": who}})
        claims = {"iss": self.url, "aud": CLIENT_ID, "sub": who.sub, "iat": now, "exp": now + 600,
                  "preferred_username": who.username, "name": who.name, "email": who.email,
                  "identity_provider_display_name": who.username.rpartition("@")[2]}
        if grant["nonce"]:
            claims["nonce"] = grant["nonce"]
        id_token = jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid})
        return 200, {
            "access_token": access, "refresh_token": refresh, "id_token": id_token, "expires_in": 172800,
            "token_type": "Bearer", "resource_server": "auth.globus.org", "scope": grant["scope"], "state": "_default",
            "other_tokens": [{
                "access_token": groups_at, "refresh_token": groups_rt, "expires_in": 172800, "token_type": "Bearer",
                "resource_server": "groups.api.globus.org",
                "scope": "urn:globus:auth:scope:groups.api.globus.org:view_my_groups_and_memberships",
            }],
        }

    def my_groups(self, bearer: str) -> tuple[int, object]:
        from globus_sdk.testing.data.groups.get_my_groups import raw_data

        info = self.tokens.get(bearer)
        if info is None or info["kind"] != "groups" or bearer in self.revoked:
            return 401, {"code": "AUTHENTICATION_FAILED", "detail": "bad token"}
        if self.groups_status >= 500:
            return self.groups_status, {"code": "SERVICE_UNAVAILABLE", "detail": "Groups is down for maintenance"}
        who: Identity = info["who"]
        groups = []
        for gid in who.groups:
            g = copy.deepcopy(raw_data[0])
            g["id"] = gid
            g["name"] = f"group {gid[-4:]}"
            g["my_memberships"] = [{**g["my_memberships"][0], "group_id": gid, "identity_id": who.sub,
                                    "username": who.username}]
            groups.append(g)
        return 200, groups

    def _handler(self):
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, body=None, location: str | None = None):
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                data = json.dumps(body).encode() if body is not None else b""
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                parts = urlsplit(self.path)
                provider.requests.append(f"GET {parts.path}")
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                bearer = self.headers.get("Authorization", "").removeprefix("Bearer ")
                if parts.path == "/.well-known/openid-configuration":
                    return self._send(200, provider.discovery())
                if parts.path == "/jwk.json":
                    return self._send(200, provider.jwks())
                if parts.path == "/v2/oauth2/authorize":
                    return self._send(302, location=provider.authorize(query))
                if parts.path == "/v2/oauth2/userinfo":
                    info = provider.tokens.get(bearer)
                    if info is None or info["kind"] != "access":
                        return self._send(401, {"error": "invalid_token"})
                    who = info["who"]
                    return self._send(200, {"sub": who.sub, "preferred_username": who.username, "name": who.name,
                                            "email": who.email})
                if parts.path == "/v2/groups/my_groups":
                    return self._send(*provider.my_groups(bearer))
                return self._send(404, {"error": "not found"})

            def do_POST(self):
                parts = urlsplit(self.path)
                provider.requests.append(f"POST {parts.path}")
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode()
                form = {k: v[0] for k, v in parse_qs(raw).items()}
                if parts.path == "/v2/oauth2/token":
                    return self._send(*provider.token(form, self.headers.get("Authorization", "")))
                if parts.path == "/v2/oauth2/token/revoke":
                    if "token" not in form:
                        return self._send(400, {"error": "invalid_request"})
                    provider.revoked.append(form["token"])
                    return self._send(200, {"active": False})
                return self._send(404, {"error": "not found"})

        return Handler


@pytest.fixture(scope="module")
def local_globus():
    provider = LocalGlobus()
    yield provider
    provider.close()


@pytest.fixture
def globus(local_globus, settings):
    """Sign-in with Globus configured against the local provider (its state reset per test)."""
    from social_core.backends.globus import GlobusOpenIdConnect

    local_globus.reset()
    # social-core caches discovery documents and keys (per URL) for a day: start afresh
    GlobusOpenIdConnect.get_openid_configuration.invalidate()
    GlobusOpenIdConnect.get_jwks_keys_for_uri.invalidate()
    settings.GLOBUS_AUTH_ENABLED = True
    settings.GLOBUS_AUTH_CLIENT_ID = settings.SOCIAL_AUTH_GLOBUS_KEY = CLIENT_ID
    settings.GLOBUS_AUTH_CLIENT_SECRET = settings.SOCIAL_AUTH_GLOBUS_SECRET = CLIENT_SECRET
    settings.GLOBUS_AUTH_URL = settings.SOCIAL_AUTH_GLOBUS_OIDC_ENDPOINT = local_globus.url
    settings.GLOBUS_GROUPS_URL = local_globus.url
    settings.GLOBUS_SCIENCE_GROUP = SCIENCE_GROUP
    settings.GLOBUS_OPERATORS_GROUP = OPERATORS_GROUP
    settings.GLOBUS_AUTH_ALLOWED_DOMAINS = ["colorado.edu", "nso.edu"]
    yield local_globus
    GlobusOpenIdConnect.get_openid_configuration.invalidate()
    GlobusOpenIdConnect.get_jwks_keys_for_uri.invalidate()
