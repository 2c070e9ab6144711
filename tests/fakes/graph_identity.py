"""The fake Microsoft identity platform (Entra ID v2.0 endpoints) behind ``FakeGraphServer``.

Serves exactly what MSAL/azure-identity call when ``disable_instance_discovery=True`` (measured with
azure-identity 1.27.0 / MSAL 1.39.0 against this fake):

1. ``GET /{tenant}/v2.0/.well-known/openid-configuration`` - MSAL then posts to its ``token_endpoint``;
2. ``POST /{tenant}/oauth2/v2.0/token`` - client credentials (§1.1), with ``client_secret`` or a
   ``client_assertion`` (a certificate-signed JWT, or a federated token from ``AZURE_FEDERATED_TOKEN_FILE``).

``/common/discovery/instance`` is deliberately **not** served (404, and recorded): a client that needs
it would, against real Entra, call the public host, which is what the tests must prove never happens.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from .graph_http import JSON_CONTENT_TYPE, HttpError, Response, iso_timestamp, json_response

DEFAULT_TENANT_ID = "8d3c1a6e-52b4-4a3f-9f1e-3f6a2b7c9d10"
DEFAULT_CLIENT_ID = "535fb089-9ff3-47b6-9bfb-4f1264799865"
DEFAULT_CLIENT_SECRET = "fake-graph-secret-value"  # a test value; still never logged by the fake
DEFAULT_TOKEN_LIFETIME = 3599  # §1.1: expires_in 3599

GRAPH_RESOURCES = ("https://graph.microsoft.com", "00000003-0000-0000-c000-000000000000")
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

# §1.3 application permissions.  The default app has all of them (admin-consented).
ALL_ROLES = (
    "DeviceManagementConfiguration.ReadWrite.All",
    "DeviceManagementManagedDevices.Read.All",
    "DeviceManagementManagedDevices.ReadWrite.All",
    "User.Read.All",
    "Group.Read.All",
    "GroupMember.Read.All",
    "GroupMember.ReadWrite.All",
    "Device.Read.All",
    "Device.ReadWrite.All",
)


@dataclass
class AppRegistration:
    """An Entra app registration with its credentials and consented application permissions.

    ``certificate_pem``: the public certificate uploaded to the app; a client assertion must carry its
    SHA-1 (``x5t``) or SHA-256 (``x5t#S256``) thumbprint and a valid signature.  ``federated_token``:
    the exact external token a workload identity presents (CHOICE: real Entra validates issuer, subject
    and audience ``api://AzureADTokenExchange`` of that JWT against a federated credential; the fake
    compares the whole string, which is what a test controls).
    """

    client_id: str = DEFAULT_CLIENT_ID
    secret: str | None = DEFAULT_CLIENT_SECRET
    certificate_pem: bytes | None = None
    federated_token: str | None = None
    roles: tuple[str, ...] = ALL_ROLES
    token_lifetime: int | None = None  # None: the server's default

    def thumbprints(self) -> set[str]:
        """base64url thumbprints of the certificate, as MSAL puts them in the JWT header."""
        if self.certificate_pem is None:
            return set()
        from cryptography import x509  # azure-identity's own dependency; only needed for certificates

        der = x509.load_pem_x509_certificate(self.certificate_pem).public_bytes(_der_encoding())
        return {_b64url(hashlib.sha1(der).digest()), _b64url(hashlib.sha256(der).digest())}


@dataclass
class Token:
    value: str = field(repr=False)
    client_id: str
    roles: tuple[str, ...]
    expires_at: float  # on the server's injectable clock


def _der_encoding() -> Any:
    from cryptography.hazmat.primitives.serialization import Encoding

    return Encoding.DER


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def oauth_error(status: int, error: str, code: int, message: str) -> HttpError:
    """§1.1 OAuth-shaped token error: ``error``, ``error_description`` (``AADSTSnnn: ...``), ``error_codes``,
    ``timestamp``, ``trace_id``, ``correlation_id``.  [unverified: exact field set] - the reference's set.
    The description never contains a submitted credential."""
    trace_id, correlation_id, stamp = str(uuid.uuid4()), str(uuid.uuid4()), iso_timestamp()
    description = (f"AADSTS{code}: {message} Trace ID: {trace_id} Correlation ID: {correlation_id} "
                   f"Timestamp: {stamp}")
    body = {"error": error, "error_description": description, "error_codes": [code], "timestamp": stamp,
            "trace_id": trace_id, "correlation_id": correlation_id,
            "error_uri": "https://login.microsoftonline.com/error?code=" + str(code)}
    response = json_response(status, body, JSON_CONTENT_TYPE)
    response.headers.append(("Cache-Control", "no-store, no-cache"))
    return HttpError(response)


class FakeIdentity:
    """Token issuing and checking.  Called with the server's lock held."""

    def __init__(self, *, tenant_id: str, tenant_domains: tuple[str, ...], apps: list[AppRegistration],
                 token_lifetime: int, clock: Callable[[], float], base_url: Callable[[], str]) -> None:
        self.tenant_id = tenant_id
        self.tenant_domains = tuple(d.lower() for d in tenant_domains)
        self.apps = {a.client_id: a for a in apps}
        self.token_lifetime = token_lifetime
        self.clock = clock
        self.base_url = base_url
        self.tokens: dict[str, Token] = {}
        self.issued = 0

    # ----------------------------------------------------------------------------- tenants

    def known_tenant(self, tenant: str) -> bool:
        return tenant == self.tenant_id or tenant.lower() in self.tenant_domains

    def _tenant_or_error(self, tenant: str) -> None:
        if not self.known_tenant(tenant):
            # CHOICE: AADSTS90002 "Tenant not found" as 400 invalid_request.
            raise oauth_error(400, "invalid_request", 90002,
                              f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID.")

    # ----------------------------------------------------------------------------- endpoints

    def openid_configuration(self, tenant: str) -> Response:
        """OIDC metadata; MSAL reads ``token_endpoint`` (and checks ``issuer``) from it."""
        self._tenant_or_error(tenant)
        base = self.base_url()
        body = {
            "token_endpoint": f"{base}/{tenant}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt",
                                                      "client_secret_basic"],
            "jwks_uri": f"{base}/{self.tenant_id}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            # Real Entra names the tenant GUID here even when the path used a domain name.
            "issuer": f"{base}/{self.tenant_id}/v2.0",
            "request_uri_parameter_supported": False,
            "authorization_endpoint": f"{base}/{tenant}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{base}/{tenant}/oauth2/v2.0/devicecode",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "end_session_endpoint": f"{base}/{tenant}/oauth2/v2.0/logout",
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "tid"],
            "tenant_region_scope": "EU",
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": "graph.microsoft.com",
        }
        return json_response(200, body, JSON_CONTENT_TYPE)

    def token(self, tenant: str, headers: Any, body: bytes) -> Response:
        """§1.1 client credentials.  Every failure is OAuth-shaped (not Graph's ``{"error": {...}}``)."""
        self._tenant_or_error(tenant)
        media = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if media != "application/x-www-form-urlencoded":
            raise oauth_error(400, "invalid_request", 900144,
                              "The request body must contain the following parameter: 'grant_type'.")
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()}
        if form.get("grant_type") != "client_credentials":
            raise oauth_error(400, "unsupported_grant_type", 70003,
                              "The app requested an unsupported grant type.")
        app = self.apps.get(form.get("client_id", ""))
        if app is None:
            raise oauth_error(400, "unauthorized_client", 700016,
                              f"Application with identifier '{form.get('client_id', '')}' was not found "
                              "in the directory.")
        self._check_scope(form.get("scope", ""))
        self._check_credential(app, tenant, form)
        lifetime = app.token_lifetime if app.token_lifetime is not None else self.token_lifetime
        value = secrets.token_urlsafe(32)
        self.tokens[value] = Token(value, app.client_id, app.roles, self.clock() + lifetime)
        self.issued += 1
        result = {"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime,
                  "access_token": value}
        response = json_response(200, result, JSON_CONTENT_TYPE)
        response.headers.append(("Cache-Control", "no-store, no-cache"))
        return response

    def _check_scope(self, scope: str) -> None:
        scopes = scope.split()
        if not scopes:
            raise oauth_error(400, "invalid_request", 900144,
                              "The request body must contain the following parameter: 'scope'.")
        for item in scopes:
            if not item.endswith("/.default"):
                # §1.1: AADSTS1002012 for a scope without /.default in this flow.
                raise oauth_error(400, "invalid_scope", 1002012,
                                  f"The provided value for scope {item} is not valid. Client credential "
                                  "flows must have a scope value with /.default suffixed to the resource "
                                  "identifier (application ID URI).")
            if item[: -len("/.default")].rstrip("/") not in GRAPH_RESOURCES:
                # CHOICE: this tenant only knows the Graph resource.
                raise oauth_error(400, "invalid_resource", 500011,
                                  f"The resource principal named {item[:-len('/.default')]} was not found "
                                  "in the tenant.")

    def _check_credential(self, app: AppRegistration, tenant: str, form: dict[str, str]) -> None:
        if "client_secret" in form:
            if app.secret is None or not hmac.compare_digest(form["client_secret"].encode(), app.secret.encode()):
                raise oauth_error(401, "invalid_client", 7000215,
                                  "Invalid client secret provided. Ensure the secret being sent in the request "
                                  f"is the client secret value, not the client secret ID, for a secret added to "
                                  f"app '{app.client_id}'.")
            return
        assertion = form.get("client_assertion")
        if assertion is None:
            raise oauth_error(401, "invalid_client", 7000216,
                              "'client_assertion', 'client_secret' or 'request' is required for the "
                              "'client_credentials' grant type.")
        if form.get("client_assertion_type") != JWT_BEARER:
            raise oauth_error(400, "invalid_request", 50027, "Invalid client_assertion_type.")
        if app.federated_token is not None and hmac.compare_digest(assertion.encode(),
                                                                   app.federated_token.encode()):
            return
        self._check_certificate_assertion(app, tenant, assertion)

    def _check_certificate_assertion(self, app: AppRegistration, tenant: str, assertion: str) -> None:
        """A certificate credential: a JWT signed with the app's key, ``aud`` = this token endpoint."""
        def reject(code: int, message: str) -> HttpError:
            return oauth_error(401, "invalid_client", code, message)

        try:
            header_b64, claims_b64, signature_b64 = assertion.split(".")
            header = json.loads(_b64url_decode(header_b64))
            claims = json.loads(_b64url_decode(claims_b64))
            signature = _b64url_decode(signature_b64)
        except ValueError:
            raise reject(700025 if app.federated_token else 700027,
                         "Client assertion is not a valid JWT.") from None
        thumb = str(header.get("x5t#S256") or header.get("x5t") or "")
        # MSAL 1.39 sends base64url *with* "=" padding (measured); RFC 7515 says unpadded.  Accept both.
        if not thumb or thumb.rstrip("=").replace("+", "-").replace("/", "_") not in app.thumbprints():
            raise reject(700027, f"Client assertion contains an invalid signature. [Reason - The key was not "
                                 f"found., Thumbprint of key used by client: '{thumb}']")
        if claims.get("iss") != app.client_id or claims.get("sub") != app.client_id:
            raise reject(700021, "Client assertion application identifier doesn't match 'client_id' parameter.")
        audiences = {f"{self.base_url()}/{tenant}/oauth2/v2.0/token",
                     f"{self.base_url()}/{self.tenant_id}/oauth2/v2.0/token"}
        if claims.get("aud") not in audiences:
            raise reject(700024, "Client assertion audience claim does not match Realm issuer.")
        # The JWT carries epoch seconds, so this one check uses the wall clock (5 min skew, as Entra).
        if float(claims.get("exp", 0)) < time.time() - 300:
            raise reject(700024, "Client assertion is not within its valid time range.")
        if not _verify_signature(app.certificate_pem or b"", header.get("alg", ""),
                                 f"{header_b64}.{claims_b64}".encode(), signature):
            raise reject(700027, "Client assertion failed signature validation.")

    # ----------------------------------------------------------------------------- bearer check

    def expire_all(self) -> None:
        now = self.clock()
        for token in self.tokens.values():
            token.expires_at = min(token.expires_at, now)

    def lookup(self, value: str) -> Token | None:
        return self.tokens.get(value)


def _verify_signature(cert_pem: bytes, alg: str, signed: bytes, signature: bytes) -> bool:
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

    key = x509.load_pem_x509_certificate(cert_pem).public_key()
    try:
        if alg == "RS256" and isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
        elif alg == "PS256" and isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, signed, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())
        elif alg == "ES256" and isinstance(key, ec.EllipticCurvePublicKey):
            from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

            half = len(signature) // 2
            der = encode_dss_signature(int.from_bytes(signature[:half]), int.from_bytes(signature[half:]))
            key.verify(der, signed, ec.ECDSA(hashes.SHA256()))
        else:
            return False
    except InvalidSignature:
        return False
    return True
