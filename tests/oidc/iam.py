"""pytest-iam (Canaille), a second OpenID provider nobody here wrote: its fixture and helpers.

Findings (tests/oidc/test_pytest_iam.py checks them): issuer ``http://localhost:<port>`` (``iam.url``
has a trailing slash, the issuer none); redirect URIs match exactly (no "any loopback port"); a nonce is
required; ID tokens are RS512 with ``aud`` a list and ``sub`` the user name; refresh rotates the refresh
token but answers no new ID token; no device grant.
"""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import requests


def discovery(iam: Any) -> dict[str, Any]:
    # iam.url has a trailing slash; the issuer has none
    return requests.get(iam.url + ".well-known/openid-configuration", timeout=5).json()  # type: ignore[no-any-return]


def make_user(iam: Any, password: str = "s3cret-password") -> Any:
    login = "u" + uuid.uuid4().hex[:8]
    user = iam.models.User(
        user_name=login, password=password, emails=[f"{login}@example.org"], formatted_name=login.upper()
    )
    iam.backend.save(user)
    return user


def make_public_client(iam: Any, redirect_uri: str) -> Any:
    """A public client (no secret, PKCE at the token endpoint); redirect URIs match exactly."""
    client = iam.models.Client(
        client_id="xwhep-cli-" + uuid.uuid4().hex[:8],
        client_name="xwhep",
        redirect_uris=[redirect_uri],
        grant_types=["authorization_code", "refresh_token"],
        response_types=["code"],
        scope=["openid", "profile", "email", "groups"],
        token_endpoint_auth_method="none",
        client_id_issued_at=datetime.datetime.now(datetime.UTC),
    )
    iam.backend.save(client)
    client.audience = [client]  # else the ID token's aud is []
    iam.backend.save(client)
    return client
