"""The accounts' configuration sections: ``[passwords]``, ``[oidc]`` and ``[directory]``
(docs/configuration.md); part of :class:`chatserver.config.Config`."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
    model_validator,
)

from .config_base import _Section


class PasswordsConfig(_Section):
    """``[passwords]``: the policy for passwords set here (chatserver/password_policy.py)."""

    min_length: int = Field(8, ge=8, le=256)
    # Refuse the passwords on the shipped list of common ones (and those plus digits).
    reject_common: bool = True


class OidcConfig(_Section):
    """``[oidc]``: single sign-on for the web client with OpenID Connect (authorization code
    flow with PKCE); docs/configuration.md, "[oidc]"."""

    enabled: bool = False
    # The provider's issuer URL (discovery: issuer + /.well-known/openid-configuration).
    issuer: str = ""
    client_id: str = ""
    client_secret: str = ""
    client_secret_file: str = ""
    # The callback URL as the browser reaches it, registered with the provider
    # (https://chat.example.com/auth/oidc/callback).
    redirect_uri: str = ""
    scopes: str = "openid profile email"
    username_claim: str = "preferred_username"
    display_name_claim: str = "name"
    email_claim: str = "email"
    # A claim listing group names (e.g. "groups"; "" for none): the user's memberships in the
    # groups single sign-on made follow it at each sign-in (such groups are made on first use).
    groups_claim: str = ""
    # Create a user on the first sign-in (else only users made before may sign in this way).
    create_users: bool = True
    # Where the page that receives the session token sends the browser next (same origin).
    post_login_path: str = "/"
    id_token_algorithms: tuple[str, ...] = ("RS256", "ES256", "PS256", "EdDSA")
    # How long a sign-in may take at the provider, and the clock skew allowed on tokens.
    state_ttl_s: int = Field(600, ge=30, le=3600)
    leeway_s: int = Field(60, ge=0, le=600)
    timeout_s: float = Field(10, gt=0, le=120)

    @model_validator(mode="after")
    def _complete(self) -> OidcConfig:
        if self.enabled:
            for key in ("issuer", "client_id", "redirect_uri"):
                if not getattr(self, key):
                    raise ValueError(f"{key} is needed")
            if not self.post_login_path.startswith("/") or self.post_login_path.startswith("//"):
                raise ValueError("post_login_path must be a path on this server (/...)")
            if "openid" not in self.scopes.split():
                raise ValueError("scopes must include openid")
        return self


class DirectoryConfig(_Section):
    """Users and groups from an LDAP directory (Active Directory, OpenLDAP); see
    docs/administration.md, "Directory"."""

    enabled: bool = False
    # Tried in order; ldaps://host[:port] or ldap://host[:port] (with start_tls for StartTLS).
    urls: tuple[str, ...] = ()
    start_tls: bool = False
    # The CA certificates (PEM) that sign the directory servers' certificates (default: the
    # system's); verify_certificates = false is for tests only.
    ca_file: str = ""
    verify_certificates: bool = True
    # The account the node searches with (read-only is enough); its password here or in a file.
    bind_dn: str = ""
    bind_password: str = ""
    bind_password_file: str = ""
    user_base: str = ""
    user_filter: str = "(objectClass=inetOrgPerson)"
    group_base: str = ""
    group_filter: str = "(objectClass=groupOfNames)"
    # Attribute mapping. id_attribute: a stable id that survives renames (AD: objectGUID).
    login_attribute: str = "uid"
    display_name_attribute: str = "cn"
    email_attribute: str = "mail"
    id_attribute: str = "entryUUID"
    group_name_attribute: str = "cn"
    member_attribute: str = "member"
    # A user is disabled when disabled_attribute holds one of disabled_values (compared without
    # case) or, as a number, has one of the bits of disabled_bits set (AD: userAccountControl, 2).
    disabled_attribute: str = ""
    disabled_values: tuple[str, ...] = ()
    disabled_bits: int = Field(0, ge=0)
    # Nested groups: "recursive" (groups listed as members are followed, by this server),
    # "matching_rule" (Active Directory resolves them: LDAP_MATCHING_RULE_IN_CHAIN), "none".
    nested_groups: Literal["recursive", "matching_rule", "none"] = "recursive"
    sync_interval_s: float = Field(300, ge=5, le=86_400)
    # A sync that would disable or remove more than this share of the directory's users (or
    # remove more than this share of its groups) stops and reports instead.
    max_removal_share: float = Field(0.2, ge=0, le=1)
    timeout_s: float = Field(10, gt=0, le=300)
    page_size: int = Field(500, ge=10, le=10_000)

    @model_validator(mode="after")
    def _complete(self) -> DirectoryConfig:
        if self.enabled:
            if not self.urls:
                raise ValueError("urls: at least one ldap:// or ldaps:// URL is needed")
            for url in self.urls:
                if not url.lower().startswith(("ldap://", "ldaps://")):
                    raise ValueError(f"urls: {url!r} is not an ldap:// or ldaps:// URL")
            if not self.user_base or not self.group_base:
                raise ValueError("user_base and group_base are needed")
        return self
