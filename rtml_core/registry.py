"""The model registry: versions, their metrics and lineage, and the champion.

Metadata lives in the offline store's database (tables ``model_versions`` and
``model_promotions``, SQLite or PostgreSQL); artifacts live in a directory, named by their
sha256 and verified against it on every load. Artifacts are never pickles: XGBoost's own
UBJSON, or JSON for linear models.

The champion is the version of the newest promotion; ``champion_epoch()`` (the id of that
promotion, strictly increasing) is a one-row query the API polls to hot-swap on promotion
and rollback alike.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa

from rtml_core.errors import InputError, RtmlError
from rtml_core.stores.offline_tables import Migration, apply_migrations, create_tables

REGISTRY_METADATA = sa.MetaData()

model_versions = sa.Table(
    "model_versions",
    REGISTRY_METADATA,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("created_at_ns", sa.BigInteger, nullable=False),
    sa.Column("artifact_file", sa.String(255), nullable=False),
    sa.Column("artifact_format", sa.String(16), nullable=False),
    sa.Column("artifact_sha256", sa.String(64), nullable=False),
    sa.Column("feature_names", sa.Text, nullable=False),  # JSON list, in the order the model expects
    sa.Column("feature_set_version", sa.String(64), nullable=False),
    sa.Column("exchange", sa.String(64)),
    sa.Column("symbol", sa.String(32)),
    sa.Column("timeframe", sa.String(16), nullable=False),
    sa.Column("horizon_s", sa.Integer, nullable=False),
    sa.Column("train_start_ns", sa.BigInteger),
    sa.Column("train_end_ns", sa.BigInteger),
    sa.Column("training_rows", sa.Integer, nullable=False),
    sa.Column("training_set_hash", sa.String(64), nullable=False),
    sa.Column("metrics", sa.Text, nullable=False),  # JSON object
    sa.Column("params", sa.Text, nullable=False),  # JSON object
    sa.Column("residual_std", sa.Float, nullable=False),
    sa.Column("run_id", sa.String(64)),
    sa.Column("code_version", sa.String(64)),
)

model_promotions = sa.Table(
    "model_promotions",
    REGISTRY_METADATA,
    sa.Column("epoch", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("version", sa.Integer, sa.ForeignKey("model_versions.version"), nullable=False),
    sa.Column("previous_version", sa.Integer),
    sa.Column("promoted_at_ns", sa.BigInteger, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("actor", sa.String(64), nullable=False),
)

REGISTRY_TABLES = (model_versions, model_promotions)


class ArtifactChecksumError(RtmlError):
    """An artifact's bytes do not match the sha256 recorded when it was registered."""


class UnknownVersion(InputError):
    """No model version with that number."""


@dataclass(frozen=True)
class ModelVersion:
    version: int
    kind: str
    created_at_ns: int
    artifact_file: str
    artifact_format: str
    artifact_sha256: str
    feature_names: tuple[str, ...]
    feature_set_version: str
    exchange: str | None
    symbol: str | None
    timeframe: str
    horizon_s: int
    train_start_ns: int | None
    train_end_ns: int | None
    training_rows: int
    training_set_hash: str
    metrics: dict
    params: dict
    residual_std: float
    run_id: str | None
    code_version: str | None

    def to_dict(self) -> dict:
        out = asdict(self)
        out["feature_names"] = list(self.feature_names)
        out["created_at"] = _iso(self.created_at_ns)
        out["train_start"] = _iso(self.train_start_ns)
        out["train_end"] = _iso(self.train_end_ns)
        return out


@dataclass(frozen=True)
class Promotion:
    epoch: int
    version: int
    previous_version: int | None
    promoted_at_ns: int
    reason: str
    actor: str

    def to_dict(self) -> dict:
        return {**asdict(self), "promoted_at": _iso(self.promoted_at_ns)}


@dataclass(frozen=True)
class LoadedModel:
    """A verified, loaded model: ``predict`` maps feature rows to predicted log returns."""

    version: int
    kind: str
    feature_names: tuple[str, ...]
    feature_set_version: str
    residual_std: float
    horizon_s: int
    timeframe: str
    metrics: dict
    predictor: object = field(repr=False)

    def predict(self, features: pd.DataFrame | np.ndarray | Sequence[float]) -> np.ndarray:
        """Predicted log return per row; a frame is reordered to ``feature_names`` by column name."""
        if isinstance(features, pd.DataFrame):
            missing = [n for n in self.feature_names if n not in features.columns]
            if missing:
                raise InputError(f"model version {self.version} needs features {missing} that the frame lacks")
            X = features.loc[:, list(self.feature_names)].to_numpy(np.float64)
        else:
            X = np.asarray(features, dtype=np.float64)
            if X.ndim == 1:
                X = X.reshape(1, -1)
            if X.shape[1] != len(self.feature_names):
                raise InputError(
                    f"model version {self.version} expects {len(self.feature_names)} features "
                    f"({', '.join(self.feature_names)}), got {X.shape[1]}"
                )
        return self.predictor.predict(X)


def _iso(ns: int | None) -> str | None:
    return None if ns is None else pd.Timestamp(ns, unit="ns", tz="UTC").isoformat()


def _json_ready(value):
    """JSON-able copy: numpy scalars to Python, NaN/inf to None (strict JSON)."""
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def code_version() -> str:
    """rtml's package version plus the git commit of the working tree when there is one."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        text = version("rtml")
    except PackageNotFoundError:
        text = "0+unknown"
    head = Path(__file__).resolve().parents[1] / ".git" / "HEAD"
    try:
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            ref = (head.parent / ref[5:]).read_text().strip()
        text += f"+g{ref[:10]}"
    except OSError:
        pass
    return text


REGISTRY_COMPONENT = "registry"
REGISTRY_MIGRATIONS: list[Migration] = [
    Migration(1, "model versions and promotions", create_tables(model_versions, model_promotions)),
]
"""The registry's own migration steps (component ``registry`` of the offline store's schema)."""


class ModelRegistry:
    """Model versions and the champion, on any SQLAlchemy engine the offline store uses."""

    def __init__(self, store_or_engine, artifacts_dir: str | os.PathLike):
        """``store_or_engine``: an offline store, a SQLAlchemy Engine, or an offline-store URL."""
        self._owned_store = None
        if isinstance(store_or_engine, str):
            from rtml_core.stores.offline import open_offline_store

            store_or_engine = self._owned_store = open_offline_store(store_or_engine)
        if isinstance(store_or_engine, sa.Engine):
            self.engine = store_or_engine
        elif hasattr(store_or_engine, "engine"):
            self.engine = store_or_engine.engine
        else:
            raise TypeError("ModelRegistry needs an offline store, a SQLAlchemy Engine or a URL")
        self.artifacts_dir = Path(artifacts_dir)
        if hasattr(store_or_engine, "apply_migrations"):
            store_or_engine.apply_migrations(REGISTRY_COMPONENT, REGISTRY_MIGRATIONS)
        else:
            apply_migrations(self.engine.begin, REGISTRY_COMPONENT, REGISTRY_MIGRATIONS)

    # ---- writing -------------------------------------------------------------------------

    def register(
        self,
        *,
        kind: str,
        artifact: bytes,
        artifact_format: str,
        feature_names: Sequence[str],
        feature_set_version: str,
        timeframe: str,
        horizon_s: int,
        training_rows: int,
        training_set_hash: str,
        metrics: Mapping,
        residual_std: float,
        params: Mapping | None = None,
        exchange: str | None = None,
        symbol: str | None = None,
        train_start_ns: int | None = None,
        train_end_ns: int | None = None,
        run_id: str | None = None,
        code_version_: str | None = None,
    ) -> ModelVersion:
        """Store the artifact (content-addressed) and its metadata in one transaction."""
        if kind not in ("lasso", "xgboost"):
            raise InputError(f"unknown model kind {kind!r}; known: lasso, xgboost")
        if not feature_names:
            raise InputError("a model needs at least one feature name")
        if not np.isfinite(residual_std) or residual_std <= 0:
            raise InputError(f"residual_std must be a positive number, got {residual_std!r}")
        digest = hashlib.sha256(artifact).hexdigest()
        file_name = f"{kind}-{digest}.{artifact_format}"
        created_file = self._write_artifact(file_name, artifact)
        row = {
            "kind": kind,
            "created_at_ns": time.time_ns(),
            "artifact_file": file_name,
            "artifact_format": artifact_format,
            "artifact_sha256": digest,
            "feature_names": json.dumps(list(feature_names)),
            "feature_set_version": feature_set_version,
            "exchange": exchange,
            "symbol": symbol,
            "timeframe": timeframe,
            "horizon_s": int(horizon_s),
            "train_start_ns": train_start_ns,
            "train_end_ns": train_end_ns,
            "training_rows": int(training_rows),
            "training_set_hash": training_set_hash,
            "metrics": json.dumps(_json_ready(dict(metrics)), sort_keys=True),
            "params": json.dumps(_json_ready(dict(params or {})), sort_keys=True),
            "residual_std": float(residual_std),
            "run_id": run_id,
            "code_version": code_version_ if code_version_ is not None else code_version(),
        }
        try:
            with self.engine.begin() as connection:
                version = connection.execute(
                    model_versions.insert().values(**row).returning(model_versions.c.version)
                ).scalar_one()
        except Exception:
            if created_file:
                (self.artifacts_dir / file_name).unlink(missing_ok=True)
            raise
        return self.get(version)

    def _write_artifact(self, file_name: str, artifact: bytes) -> bool:
        """Write atomically (temp file + rename); False when identical bytes are already there."""
        self.artifacts_dir.mkdir(parents=True, exist_ok=True)
        target = self.artifacts_dir / file_name
        if target.exists() and hashlib.sha256(target.read_bytes()).hexdigest() == file_name.split("-", 1)[1].split(".")[0]:
            return False
        handle, temp = tempfile.mkstemp(dir=self.artifacts_dir, prefix=".tmp-")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(artifact)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, target)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        return True

    def promote(self, version: int, reason: str, *, actor: str = "manual") -> Promotion:
        """Make ``version`` the champion (also how a rollback is done); history is kept."""
        if not reason.strip():
            raise InputError("a promotion needs a reason")
        with self.engine.begin() as connection:
            exists = connection.execute(
                sa.select(model_versions.c.version).where(model_versions.c.version == int(version))
            ).first()
            if exists is None:
                raise UnknownVersion(f"no model version {version}")
            current = connection.execute(
                sa.select(model_promotions.c.version).order_by(model_promotions.c.epoch.desc()).limit(1)
            ).scalar()
            epoch = connection.execute(
                model_promotions.insert()
                .values(
                    version=int(version),
                    previous_version=current,
                    promoted_at_ns=time.time_ns(),
                    reason=reason,
                    actor=actor,
                )
                .returning(model_promotions.c.epoch)
            ).scalar_one()
        return next(p for p in self.promotions() if p.epoch == epoch)

    # ---- reading -------------------------------------------------------------------------

    def list(self) -> list[ModelVersion]:
        with self.engine.connect() as connection:
            rows = connection.execute(sa.select(model_versions).order_by(model_versions.c.version)).mappings()
            return [_version(row) for row in rows]

    def get(self, version: int) -> ModelVersion:
        with self.engine.connect() as connection:
            row = connection.execute(
                sa.select(model_versions).where(model_versions.c.version == int(version))
            ).mappings().first()
        if row is None:
            raise UnknownVersion(f"no model version {version}")
        return _version(row)

    def promotions(self) -> list[Promotion]:
        """Every promotion, oldest first."""
        with self.engine.connect() as connection:
            rows = connection.execute(sa.select(model_promotions).order_by(model_promotions.c.epoch)).mappings()
            return [Promotion(**row) for row in rows]

    def champion_epoch(self) -> int:
        """Id of the newest promotion (0 before any): changes on every promotion and rollback."""
        with self.engine.connect() as connection:
            return int(connection.execute(sa.select(sa.func.max(model_promotions.c.epoch))).scalar() or 0)

    def champion(self) -> ModelVersion | None:
        with self.engine.connect() as connection:
            version = connection.execute(
                sa.select(model_promotions.c.version).order_by(model_promotions.c.epoch.desc()).limit(1)
            ).scalar()
        return None if version is None else self.get(version)

    def load_model(self, version: int) -> LoadedModel:
        """Read the artifact, verify its sha256, and build the predictor (no pickle anywhere)."""
        from rtml_core.training.models import predictor_from_artifact

        meta = self.get(version)
        path = self.artifacts_dir / meta.artifact_file
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise ArtifactChecksumError(f"artifact of model version {version} is missing: {path}") from None
        digest = hashlib.sha256(raw).hexdigest()
        if digest != meta.artifact_sha256:
            raise ArtifactChecksumError(
                f"artifact {path} of model version {version} has sha256 {digest}, "
                f"registered {meta.artifact_sha256}: refusing to load it"
            )
        return LoadedModel(
            version=meta.version,
            kind=meta.kind,
            feature_names=meta.feature_names,
            feature_set_version=meta.feature_set_version,
            residual_std=meta.residual_std,
            horizon_s=meta.horizon_s,
            timeframe=meta.timeframe,
            metrics=meta.metrics,
            predictor=predictor_from_artifact(meta.kind, raw),
        )

    def load_champion(self) -> LoadedModel | None:
        champion = self.champion()
        return None if champion is None else self.load_model(champion.version)

    def close(self) -> None:
        """Close the store only when the registry opened it from a URL."""
        if self._owned_store is not None:
            self._owned_store.close()
            self._owned_store = None


def _version(row: Mapping) -> ModelVersion:
    values = dict(row)
    values["feature_names"] = tuple(json.loads(values["feature_names"]))
    values["metrics"] = json.loads(values["metrics"])
    values["params"] = json.loads(values["params"])
    return ModelVersion(**values)
