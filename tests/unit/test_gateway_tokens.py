"""Per-trial tokens: what the controller signs, the gateway trusts, and nothing else."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from controller.gateway.tokens import TokenClaims, TokenKeyError, TokenKeys, TokenRefused

KEY_A = "a" * 40
KEY_B = "b" * 40
NOW = 1_800_000_000.0
CLAIMS = TokenClaims(namespace="team-a", study="team-a/mlp/uid-1", trial=3, expires=int(NOW) + 3600)


def keys(*lines: str) -> TokenKeys:
    return TokenKeys([line.encode() for line in lines])


def test_a_minted_token_verifies_to_its_claims() -> None:
    token = keys(KEY_A).mint(CLAIMS)
    assert token.startswith("tft1.")
    assert keys(KEY_A).verify(token, NOW) == CLAIMS
    assert not CLAIMS.read_only
    assert TokenClaims(namespace="n", study="n/s/u", expires=1).read_only


def _tamper(token: str, **changes: object) -> str:
    prefix, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{prefix}.{forged}.{signature}"


@pytest.mark.parametrize(
    "changes", [{"trial": 4}, {"study": "team-b/other/uid-2"}, {"namespace": "team-b"}, {"expires": 2**40}]
)
def test_a_token_whose_claims_were_changed_is_refused_as_tampered(changes: dict[str, object]) -> None:
    tampered = _tamper(keys(KEY_A).mint(CLAIMS), **changes)
    with pytest.raises(TokenRefused, match="bad signature") as refused:
        keys(KEY_A).verify(tampered, NOW)
    assert "tampered" in refused.value.reason


def test_a_token_signed_with_another_key_is_refused_as_forged() -> None:
    forged = keys(KEY_B).mint(CLAIMS)
    with pytest.raises(TokenRefused, match="forged"):
        keys(KEY_A).verify(forged, NOW)


@pytest.mark.parametrize(
    "token",
    ["", "garbage", "tft1.abc", "tft2.e30.e30", "tft1.e30.%%%", "tft1..", "Bearer tft1.a.b.c"],
)
def test_malformed_tokens_are_refused_with_a_reason(token: str) -> None:
    with pytest.raises(TokenRefused) as refused:
        keys(KEY_A).verify(token, NOW)
    assert refused.value.reason.startswith(("malformed", "bad signature"))


def test_well_signed_claims_that_are_not_claims_are_malformed() -> None:
    signer = keys(KEY_A)
    payload = base64.urlsafe_b64encode(b'{"namespace": "x"}').rstrip(b"=").decode()
    from controller.gateway import tokens

    signed = f"tft1.{payload}"
    signature = tokens._encode(tokens._sign(KEY_A.encode(), signed))
    with pytest.raises(TokenRefused, match="malformed"):
        signer.verify(f"{signed}.{signature}", NOW)


def test_an_expired_token_is_refused_and_says_when_it_expired() -> None:
    token = keys(KEY_A).mint(CLAIMS)
    with pytest.raises(TokenRefused, match="expired") as refused:
        keys(KEY_A).verify(token, CLAIMS.expires + 1)
    assert str(CLAIMS.expires) in refused.value.reason
    with pytest.raises(TokenRefused, match="expired"):
        keys(KEY_A).verify(token, CLAIMS.expires)


def test_rotation_the_first_key_signs_and_every_key_verifies(tmp_path: Path) -> None:
    old = keys(KEY_A).mint(CLAIMS)
    path = tmp_path / "keys"
    path.write_text(f"# rotation: new key first\n\n{KEY_B}\n{KEY_A}\n")
    rotated = TokenKeys.from_file(path)
    assert rotated.verify(old, NOW) == CLAIMS  # tokens of running trials still verify
    new = rotated.mint(CLAIMS)
    assert keys(KEY_B).verify(new, NOW) == CLAIMS  # the new key signs
    with pytest.raises(TokenRefused):
        keys(KEY_A).verify(new, NOW)  # a gateway not yet rolled refuses it: roll the gateway first


def test_key_file_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent"
    with pytest.raises(TokenKeyError, match="absent"):
        TokenKeys.from_file(missing)
    empty = tmp_path / "empty"
    empty.write_text("# nothing\n\n")
    with pytest.raises(TokenKeyError, match=r"empty.*no key"):
        TokenKeys.from_file(empty)
    short = tmp_path / "short"
    short.write_text(f"{KEY_A}\ntoo-short\n")
    with pytest.raises(TokenKeyError, match=r"short.*key 2 has 9 characters"):
        TokenKeys.from_file(short)
