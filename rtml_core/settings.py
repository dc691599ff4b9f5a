"""One Settings model, built once at each entry point and passed down."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every environment variable rtml reads, with the prefix ``RTML_``."""

    model_config = SettingsConfigDict(env_prefix="RTML_", extra="ignore")

    home: Path = Field(default=Path(".rtml"), description="Where embedded stores and artifacts live.")
    offline_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the offline store; default a SQLite file under RTML_HOME. "
        "Use postgresql+psycopg://user@host/db for PostgreSQL.",
    )
    online_url: str | None = Field(
        default=None,
        description="redis://host:port/db for Redis; default an embedded SQLite file under RTML_HOME.",
    )
    online_prefix: str = Field(default="rtml", description="Key prefix of every online-store key.")
    artifacts_dir: Path | None = Field(
        default=None, description="Model artifact directory; default RTML_HOME/artifacts."
    )
    log_level: str = Field(default="INFO", description="Log level of every rtml process.")

    @property
    def resolved_offline_url(self) -> str:
        if self.offline_url:
            return self.offline_url
        return f"sqlite:///{(self.home / 'offline.sqlite').resolve()}"

    @property
    def resolved_online_url(self) -> str:
        if self.online_url:
            return self.online_url
        return f"sqlite:///{(self.home / 'online.sqlite').resolve()}"

    @property
    def resolved_artifacts_dir(self) -> Path:
        return (self.artifacts_dir or self.home / "artifacts").resolve()
