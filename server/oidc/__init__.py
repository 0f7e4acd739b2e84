"""OpenID Connect: the identity providers this server trusts, and sign-in through them.

* ``config``: the providers an administrator lists in settings.toml (``[oidc.<name>]`` tables).
* ``trust``: discovery and JWKS fetched and cached per provider; ID tokens verified (signature with a
  published asymmetric key, iss, aud/azp, exp, nbf, iat, nonce).
* ``signin``: a verified identity (issuer, subject) becomes a user: linked, created, or refused.

The result of an OIDC sign-in is the same short-lived xwhep token as a password login.
"""
