"""Per-trial tokens: what the controller signs and the gateway checks.

A token is ``tft1.<base64url(json claims)>.<base64url(HMAC-SHA256 of the first two parts)>``.
HMAC with a key only the controller and the gateway hold: no public-key machinery, because the
signer and the verifier are the same operator. The first key of the key file signs, every key
verifies, so keys rotate without a flag day (docs/gateway.md says in which order).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

TOKEN_PREFIX = "tft1"
MIN_KEY_CHARS = 32


class TokenClaims(BaseModel):
    """What a token allows: one trial (or, ``trial`` None, read-only access) of one study."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    namespace: str = Field(min_length=1)
    study: str = Field(min_length=1, description="The Optuna study name, <namespace>/<name>/<uid>.")
    trial: int | None = Field(default=None, ge=0, description="None: a read-only token for the study.")
    expires: int = Field(description="Unix seconds after which the token is refused.")

    @property
    def read_only(self) -> bool:
        return self.trial is None

    def describe(self) -> str:
        """For log lines and refusals: never the token itself."""
        who = "read-only" if self.trial is None else f"trial {self.trial}"
        return f"{who} of study {self.study!r}"


class TokenKeyError(ValueError):
    """The key file is missing or unusable; the message names the file and what is wrong."""


class TokenRefused(Exception):
    """The token cannot be trusted; ``reason`` says why (never echoing the token)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TokenKeys:
    """The signing keys: the first signs, every one verifies."""

    def __init__(self, keys: list[bytes], source: str = "keys") -> None:
        if not keys:
            raise TokenKeyError(f"{source}: no key (one key per line, at least {MIN_KEY_CHARS} characters)")
        for number, key in enumerate(keys, start=1):
            if len(key) < MIN_KEY_CHARS:
                raise TokenKeyError(
                    f"{source}: key {number} has {len(key)} characters; each key needs at least "
                    f"{MIN_KEY_CHARS}"
                )
        self._keys = list(keys)
        self.source = source

    @classmethod
    def from_file(cls, path: str | Path) -> TokenKeys:
        """One key per line; blank lines and ``#`` comments are ignored."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
            raise TokenKeyError(f"token key file {str(path)!r}: cannot read it: {reason}") from None
        lines = [line.strip() for line in text.splitlines()]
        keys = [line.encode() for line in lines if line and not line.startswith("#")]
        return cls(keys, source=f"token key file {str(path)!r}")

    def mint(self, claims: TokenClaims) -> str:
        payload = _encode(claims.model_dump_json().encode())
        signed = f"{TOKEN_PREFIX}.{payload}"
        return f"{signed}.{_encode(_sign(self._keys[0], signed))}"

    def verify(self, token: str, now: float) -> TokenClaims:
        """The token's claims, if one of our keys signed it and it has not expired.

        Raises:
            TokenRefused: malformed, bad signature (forged, tampered, or signed with a key this
                side does not hold) or expired.
        """
        parts = token.strip().split(".")
        if len(parts) != 3 or parts[0] != TOKEN_PREFIX:
            raise TokenRefused(f"malformed token: expected {TOKEN_PREFIX}.<claims>.<signature>")
        try:
            signature = _decode(parts[2])
        except ValueError:
            raise TokenRefused("malformed token: the signature is not base64url") from None
        signed = f"{parts[0]}.{parts[1]}"
        if not any(hmac.compare_digest(_sign(key, signed), signature) for key in self._keys):
            raise TokenRefused(
                "bad signature: the token was forged, tampered with, or signed with a key this gateway "
                "does not hold"
            )
        try:
            claims = TokenClaims.model_validate(json.loads(_decode(parts[1])))
        except (ValueError, ValidationError):
            raise TokenRefused("malformed token: its claims are not valid") from None
        ensure_unexpired(claims, now)
        return claims


def ensure_unexpired(claims: TokenClaims, now: float) -> None:
    """TokenRefused when the token's expiry (its trial's reservation end) has passed."""
    if claims.expires <= now:
        raise TokenRefused(f"expired token: {claims.describe()} expired at {claims.expires} (unix)")


def _sign(key: bytes, signed: str) -> bytes:
    return hmac.new(key, signed.encode(), hashlib.sha256).digest()


def _encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _decode(text: str) -> bytes:
    if not text or not all(c.isalnum() or c in "-_" for c in text):
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as error:
        raise ValueError("not base64url") from error
