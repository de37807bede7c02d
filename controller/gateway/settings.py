"""The gateway's settings, read from the environment the chart's Deployment sets."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from trial_worker.contract import DB_PASSWORD_ENV, StorageUrlError, normalize_storage_url, split_password

STORAGE_URL_ENV = "TUNEFLEET_STORAGE_URL"  # as the controller reads it (controller/kube/commands.py)
LISTEN_ENV = "TUNEFLEET_GATEWAY_LISTEN"
HTTP_PORT_ENV = "TUNEFLEET_GATEWAY_HTTP_PORT"
TLS_CERT_ENV = "TUNEFLEET_GATEWAY_TLS_CERT"
TLS_KEY_ENV = "TUNEFLEET_GATEWAY_TLS_KEY"
TOKEN_KEYS_ENV = "TUNEFLEET_GATEWAY_TOKEN_KEYS"
POOL_SIZE_ENV = "TUNEFLEET_GATEWAY_POOL_SIZE"
MAX_IN_FLIGHT_ENV = "TUNEFLEET_GATEWAY_MAX_IN_FLIGHT"
MAX_STREAMS_ENV = "TUNEFLEET_GATEWAY_MAX_STREAMS"

DEFAULT_LISTEN = "0.0.0.0:7443"
DEFAULT_HTTP_PORT = 8080
DEFAULT_POOL_SIZE = 20
DEFAULT_MAX_IN_FLIGHT = 64
DEFAULT_MAX_STREAMS = 4096  # open Reports streams per replica: one per running trial


class SettingsError(ValueError):
    """A setting is missing or malformed; ``variable`` names the environment variable."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


class GatewaySettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    storage_url: str  # normalized, without the password
    db_password: str | None = None
    listen: str = DEFAULT_LISTEN
    http_port: int = DEFAULT_HTTP_PORT  # 0: no HTTP side port
    tls_cert: Path
    tls_key: Path
    token_keys: Path
    pool_size: int = DEFAULT_POOL_SIZE
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    max_streams: int = DEFAULT_MAX_STREAMS

    @property
    def connection_url(self) -> str:
        from trial_worker.contract import connection_url

        env = {DB_PASSWORD_ENV: self.db_password} if self.db_password else {}
        return connection_url(self.storage_url, env)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> GatewaySettings:
        """Raises SettingsError naming the variable for each missing or malformed value."""
        raw_url = environ.get(STORAGE_URL_ENV)
        if not raw_url:
            raise SettingsError(STORAGE_URL_ENV, "set it to the study database URL")
        try:
            url, inline_password = split_password(normalize_storage_url(raw_url))
        except StorageUrlError as error:
            raise SettingsError(STORAGE_URL_ENV, str(error)) from None
        listen = environ.get(LISTEN_ENV) or DEFAULT_LISTEN
        host, colon, port = listen.rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise SettingsError(LISTEN_ENV, f"expected HOST:PORT, got {listen!r}")
        return cls(
            storage_url=url,
            db_password=environ.get(DB_PASSWORD_ENV) or inline_password,
            listen=listen,
            http_port=_whole(environ, HTTP_PORT_ENV, DEFAULT_HTTP_PORT, minimum=0, maximum=65535),
            tls_cert=_file(environ, TLS_CERT_ENV),
            tls_key=_file(environ, TLS_KEY_ENV),
            token_keys=_file(environ, TOKEN_KEYS_ENV),
            pool_size=_whole(environ, POOL_SIZE_ENV, DEFAULT_POOL_SIZE, minimum=1),
            max_in_flight=_whole(environ, MAX_IN_FLIGHT_ENV, DEFAULT_MAX_IN_FLIGHT, minimum=1),
            max_streams=_whole(environ, MAX_STREAMS_ENV, DEFAULT_MAX_STREAMS, minimum=1),
        )


def _whole(
    environ: Mapping[str, str], name: str, default: int, minimum: int, maximum: int | None = None
) -> int:
    raw = environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(name, f"expected a whole number, got {raw!r}") from None
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise SettingsError(name, f"must be {bound}, got {value}")
    return value


def _file(environ: Mapping[str, str], name: str) -> Path:
    raw = environ.get(name)
    if not raw:
        raise SettingsError(name, "required: the path of a PEM/key file")
    path = Path(raw)
    if not path.is_file():
        raise SettingsError(name, f"{raw!r} is not a readable file")
    return path
