"""The model registry: versions, their metrics, verdicts and lineage, and one champion per market.

Metadata lives in the offline store's database (tables ``model_versions``,
``model_promotions``, ``model_verdicts`` and ``model_audit``, SQLite or PostgreSQL);
artifacts live in a directory, named by their sha256 and verified against it on every load.
Artifacts are never pickles: XGBoost's own UBJSON, JSON for linear models and baselines.

Every version belongs to one market, (exchange, symbol, timeframe) and a horizon H, and the
registry keeps one champion per market: the version of that market's newest promotion.
``promote`` is the only way to change a champion, for the Dagster asset, the CLI and
everything else, and it re-checks the version's recorded verdict (``record_verdict``): a
failed or unjudged version is refused unless forced with a reason; a rollback to a former
champion of the same market and a market's first champion being its zero-return baseline
are allowed. Every promotion and refusal is written to the audit table (who, when, why).
``champion_epoch()`` (the id of the newest promotion of any market, strictly increasing) is
a one-row query the API polls to hot-swap on promotion and rollback alike.
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
from rtml_core.stores.offline_base import OfflineStore
from rtml_core.times import iso_from_ns
from rtml_core.stores.offline_tables import Migration, add_columns, create_tables

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
    sa.Column("calibration", sa.Text),  # JSON: the prob_up calibrator (None: registered before it existed)
    sa.Column("served_fit", sa.Text),  # which fit the artifact is, against the metrics
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
    sa.Column("exchange", sa.String(64)),
    sa.Column("symbol", sa.String(32)),
    sa.Column("timeframe", sa.String(16)),
    sa.Column("horizon_s", sa.Integer),
    sa.Column("action", sa.String(16)),  # promote | initial | rollback | force (None: before verdicts)
)

model_verdicts = sa.Table(
    "model_verdicts",
    REGISTRY_METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("version", sa.Integer, sa.ForeignKey("model_versions.version"), nullable=False, index=True),
    sa.Column("judged_at_ns", sa.BigInteger, nullable=False),
    sa.Column("passed", sa.Boolean, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("champion_version", sa.Integer),  # the champion it was judged against
    sa.Column("details", sa.Text, nullable=False),  # JSON: test, statistics, p-values, margin
)

model_audit = sa.Table(
    "model_audit",
    REGISTRY_METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at_ns", sa.BigInteger, nullable=False),
    sa.Column("actor", sa.String(128), nullable=False),
    sa.Column("action", sa.String(16), nullable=False),  # promote | initial | rollback | force | refused
    sa.Column("version", sa.Integer, nullable=False, index=True),
    sa.Column("exchange", sa.String(64)),
    sa.Column("symbol", sa.String(32)),
    sa.Column("timeframe", sa.String(16)),
    sa.Column("horizon_s", sa.Integer),
    sa.Column("reason", sa.Text, nullable=False),
)

REGISTRY_TABLES = (model_versions, model_promotions, model_verdicts, model_audit)


class ArtifactChecksumError(RtmlError):
    """An artifact's bytes do not match the sha256 recorded when it was registered."""


class UnknownVersion(InputError):
    """No model version with that number."""


class PromotionRefused(RtmlError):
    """The gate refused a promotion: the version failed, was never judged, or was judged
    against another champion. ``reason`` says which."""

    def __init__(self, version: int, reason: str) -> None:
        super().__init__(f"model version {version} is not promoted: {reason}")
        self.version = version
        self.reason = reason


@dataclass(frozen=True)
class Market:
    """(exchange, symbol, timeframe) and the horizon H: what a version and a champion belong to."""

    exchange: str | None
    symbol: str | None
    timeframe: str
    horizon_s: int

    def label(self) -> str:
        return f"{self.exchange} {self.symbol} {self.timeframe} H={self.horizon_s}s"


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
    calibration: dict | None = None
    served_fit: str | None = None

    @property
    def market(self) -> Market:
        return Market(self.exchange, self.symbol, self.timeframe, self.horizon_s)

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
    exchange: str | None = None
    symbol: str | None = None
    timeframe: str | None = None
    horizon_s: int | None = None
    action: str | None = None

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
    exchange: str | None = None
    symbol: str | None = None
    calibration: dict | None = None
    served_fit: str | None = None

    def predict(self, features: pd.DataFrame | np.ndarray | Sequence[float]) -> np.ndarray:
        """Predicted log return per row; a frame is reordered to ``feature_names`` by column name."""
        if isinstance(features, pd.DataFrame):
            missing = [n for n in self.feature_names if n not in features.columns]
            if missing:
                raise InputError(f"model version {self.version} needs features {missing} that the frame lacks")
            if not self.feature_names:
                return self.predictor.predict(np.zeros((len(features), 0)))
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
    return None if ns is None else iso_from_ns(ns, "offset")


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


def _market_promotions(conn) -> None:
    """Step 2: promotions name their market (filled from their version); verdicts and audit."""
    add_columns("model_versions", sa.Column("calibration", sa.Text), sa.Column("served_fit", sa.Text))(conn)
    add_columns("model_promotions", sa.Column("exchange", sa.String(64)), sa.Column("symbol", sa.String(32)),
                sa.Column("timeframe", sa.String(16)), sa.Column("horizon_s", sa.Integer),
                sa.Column("action", sa.String(16)))(conn)
    create_tables(model_verdicts, model_audit)(conn)
    source = sa.select(model_versions).where(model_versions.c.version == model_promotions.c.version)
    conn.execute(model_promotions.update().where(model_promotions.c.timeframe.is_(None)).values(
        exchange=source.with_only_columns(model_versions.c.exchange).scalar_subquery(),
        symbol=source.with_only_columns(model_versions.c.symbol).scalar_subquery(),
        timeframe=source.with_only_columns(model_versions.c.timeframe).scalar_subquery(),
        horizon_s=source.with_only_columns(model_versions.c.horizon_s).scalar_subquery(),
    ))


REGISTRY_COMPONENT = "registry"
REGISTRY_MIGRATIONS: list[Migration] = [
    Migration(1, "model versions and promotions", create_tables(model_versions, model_promotions)),
    Migration(2, "one champion per market, verdicts and the audit table", _market_promotions),
]
"""The registry's own migration steps (component ``registry`` of the offline store's schema)."""


def _who() -> str:
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"[:128]


def _same_market(table: sa.Table, market: Market, *, any_horizon: bool = False):
    """A WHERE clause for ``market`` (NULL exchange/symbol compared as NULL)."""
    clauses = []
    for name in ("exchange", "symbol", "timeframe", "horizon_s"):
        value = getattr(market, name)
        if name == "horizon_s" and any_horizon and value is None:
            continue
        column = table.c[name]
        clauses.append(column.is_(None) if value is None else column == value)
    return sa.and_(*clauses)


class ModelRegistry:
    """Model versions and one champion per market, in tables of the offline store."""

    def __init__(self, store: OfflineStore, artifacts_dir: str | os.PathLike, *, owns_store: bool = False):
        """Migrate the registry's tables in ``store``; ``owns_store``: ``close()`` closes it too."""
        self.store = store
        self._owns_store = owns_store
        self.artifacts_dir = Path(artifacts_dir)
        store.apply_migrations(REGISTRY_COMPONENT, REGISTRY_MIGRATIONS)

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
        calibration: Mapping | None = None,
        served_fit: str | None = None,
    ) -> ModelVersion:
        """Store the artifact (content-addressed) and its metadata in one transaction."""
        from rtml_core.training.models import KINDS

        if kind not in KINDS:
            raise InputError(f"unknown model kind {kind!r}; known: {', '.join(KINDS)}")
        if not exchange or not symbol:
            raise InputError("a model version belongs to one market: exchange and symbol are required")
        if not feature_names and kind != "baseline_zero":
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
            "calibration": None if calibration is None else json.dumps(_json_ready(dict(calibration)), sort_keys=True),
            "served_fit": served_fit,
        }
        try:
            with self.store.begin_write() as connection:
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


    def record_verdict(self, version: int, verdict: Mapping) -> None:
        """Record the gate's verdict on ``version`` (``rtml_core.training.gate.Verdict.to_dict()``:
        passed, reason, champion_version, the test and its numbers). The newest one counts."""
        self.get(version)
        with self.store.begin_write() as connection:
            connection.execute(model_verdicts.insert().values(
                version=int(version), judged_at_ns=time.time_ns(), passed=bool(verdict["passed"]),
                reason=str(verdict["reason"]), champion_version=verdict.get("champion_version"),
                details=json.dumps(_json_ready(dict(verdict)), sort_keys=True),
            ))

    def verdict(self, version: int) -> dict | None:
        """The newest recorded verdict on ``version`` (None: never judged)."""
        with self.store.connect() as connection:
            row = connection.execute(
                sa.select(model_verdicts).where(model_verdicts.c.version == int(version))
                .order_by(model_verdicts.c.id.desc()).limit(1)
            ).mappings().first()
        if row is None:
            return None
        return {**json.loads(row["details"]), "passed": bool(row["passed"]), "reason": row["reason"],
                "champion_version": row["champion_version"], "judged_at": _iso(row["judged_at_ns"])}

    def promote(self, version: int, reason: str, *, actor: str | None = None, force: bool = False) -> Promotion:
        """Make ``version`` its market's champion, if the gate allows it; the one code path.

        Allowed: a recorded verdict that passed against the market's current champion; a
        rollback to a former champion of the same market; the zero-return baseline as a
        market's first champion; anything with ``force=True`` and a reason (recorded as forced).
        Refused (``PromotionRefused``, written to the audit table): everything else.
        """
        if not reason or not reason.strip():
            raise InputError("a promotion needs a reason")
        actor = actor or _who()
        meta = self.get(version)
        market = meta.market
        current = self.champion_of(market)
        if current is not None and current.version == meta.version:
            raise PromotionRefused(meta.version, f"it is already the champion of {market.label()}")
        action, why = self._allowed(meta, market, current, force)
        if action is None:
            self._audit(actor, "refused", meta, f"{why} (asked: {reason})")
            raise PromotionRefused(meta.version, why)
        now = time.time_ns()
        with self.store.begin_write() as connection:
            epoch = connection.execute(
                model_promotions.insert()
                .values(
                    version=meta.version, previous_version=current.version if current else None,
                    promoted_at_ns=now, reason=reason, actor=actor, exchange=market.exchange,
                    symbol=market.symbol, timeframe=market.timeframe, horizon_s=market.horizon_s, action=action,
                )
                .returning(model_promotions.c.epoch)
            ).scalar_one()
            connection.execute(model_audit.insert().values(
                at_ns=now, actor=actor, action=action, version=meta.version, exchange=market.exchange,
                symbol=market.symbol, timeframe=market.timeframe, horizon_s=market.horizon_s,
                reason=f"{reason} [{why}]",
            ))
        return next(p for p in self.promotions() if p.epoch == epoch)

    def _allowed(self, meta: ModelVersion, market: Market, current: ModelVersion | None,
                 force: bool) -> tuple[str | None, str]:
        if force:
            return "force", "forced past the gate"
        if any(p.version == meta.version for p in self.promotions(market)):
            return "rollback", f"version {meta.version} was champion of {market.label()} before"
        if current is None and meta.kind == "baseline_zero":
            return "initial", "the zero-return baseline is a market's first champion"
        verdict = self.verdict(meta.version)
        if verdict is None:
            return None, "it was never judged by the promotion gate (train it with rtml train, or --force --reason)"
        if not verdict["passed"]:
            return None, f"it failed the promotion gate: {verdict['reason']}"
        judged_against = verdict.get("champion_version")
        if (current.version if current else None) != judged_against:
            return None, (f"it was judged against champion {judged_against}, but the champion of "
                          f"{market.label()} is now {current.version if current else 'none'}: judge it again")
        return "promote", "passed the promotion gate: " + verdict["reason"]

    def _audit(self, actor: str, action: str, meta: ModelVersion, reason: str) -> None:
        with self.store.begin_write() as connection:
            connection.execute(model_audit.insert().values(
                at_ns=time.time_ns(), actor=actor, action=action, version=meta.version, exchange=meta.exchange,
                symbol=meta.symbol, timeframe=meta.timeframe, horizon_s=meta.horizon_s, reason=reason,
            ))

    # ---- reading -------------------------------------------------------------------------

    def list(self, exchange: str | None = None, symbol: str | None = None,
             timeframe: str | None = None) -> list[ModelVersion]:
        """Every version, oldest first; optionally only those of one exchange/symbol/timeframe."""
        query = sa.select(model_versions).order_by(model_versions.c.version)
        for name, value in (("exchange", exchange), ("symbol", symbol), ("timeframe", timeframe)):
            if value is not None:
                query = query.where(model_versions.c[name] == value)
        with self.store.connect() as connection:
            return [_version(row) for row in connection.execute(query).mappings()]

    def get(self, version: int) -> ModelVersion:
        with self.store.connect() as connection:
            row = connection.execute(
                sa.select(model_versions).where(model_versions.c.version == int(version))
            ).mappings().first()
        if row is None:
            raise UnknownVersion(f"no model version {version}")
        return _version(row)

    def promotions(self, market: Market | None = None) -> list[Promotion]:
        """Every promotion (of ``market`` when given), oldest first."""
        query = sa.select(model_promotions).order_by(model_promotions.c.epoch)
        if market is not None:
            query = query.where(_same_market(model_promotions, market))
        with self.store.connect() as connection:
            return [Promotion(**row) for row in connection.execute(query).mappings()]

    def audit(self, version: int | None = None) -> list[dict]:
        """The audit table (who, when, what, why), oldest first; of ``version`` when given."""
        query = sa.select(model_audit).order_by(model_audit.c.id)
        if version is not None:
            query = query.where(model_audit.c.version == int(version))
        with self.store.connect() as connection:
            rows = connection.execute(query).mappings().all()
        return [{**dict(row), "at": _iso(row["at_ns"])} for row in rows]

    def champion_epoch(self) -> int:
        """Id of the newest promotion of any market (0 before any): changes on every promotion and rollback."""
        with self.store.connect() as connection:
            return int(connection.execute(sa.select(sa.func.max(model_promotions.c.epoch))).scalar() or 0)

    def champion_of(self, market: Market) -> ModelVersion | None:
        """The champion of one market (newest promotion of its horizon; of any horizon when None)."""
        with self.store.connect() as connection:
            version = connection.execute(
                sa.select(model_promotions.c.version)
                .where(_same_market(model_promotions, market, any_horizon=True))
                .order_by(model_promotions.c.epoch.desc()).limit(1)
            ).scalar()
        return None if version is None else self.get(version)

    def champion(self, exchange: str | None = None, symbol: str | None = None, timeframe: str | None = None,
                 horizon_s: int | None = None) -> ModelVersion | None:
        """The champion of a market when one is named; without arguments the most recently
        promoted champion of any market."""
        if timeframe is not None:
            return self.champion_of(Market(exchange, symbol, timeframe, horizon_s))
        with self.store.connect() as connection:
            version = connection.execute(
                sa.select(model_promotions.c.version).order_by(model_promotions.c.epoch.desc()).limit(1)
            ).scalar()
        return None if version is None else self.get(version)

    def champions(self) -> dict[Market, tuple[int, ModelVersion]]:
        """Every market's champion with the epoch of its promotion."""
        newest = (sa.select(sa.func.max(model_promotions.c.epoch))
                  .group_by(model_promotions.c.exchange, model_promotions.c.symbol, model_promotions.c.timeframe,
                            model_promotions.c.horizon_s))
        with self.store.connect() as connection:
            rows = connection.execute(
                sa.select(model_promotions.c.epoch, model_promotions.c.version)
                .where(model_promotions.c.epoch.in_(newest)).order_by(model_promotions.c.epoch)
            ).all()
        out = {}
        for epoch, version in rows:
            meta = self.get(version)
            out[meta.market] = (int(epoch), meta)
        return out

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
            exchange=meta.exchange,
            symbol=meta.symbol,
            calibration=meta.calibration,
            served_fit=meta.served_fit,
        )

    def load_champion(self) -> LoadedModel | None:
        champion = self.champion()
        return None if champion is None else self.load_model(champion.version)

    def close(self) -> None:
        """Close the store only when the registry owns it."""
        if self._owns_store:
            self._owns_store = False
            self.store.close()


def _version(row: Mapping) -> ModelVersion:
    values = dict(row)
    values["feature_names"] = tuple(json.loads(values["feature_names"]))
    values["metrics"] = json.loads(values["metrics"])
    values["params"] = json.loads(values["params"])
    values["calibration"] = json.loads(values["calibration"]) if values.get("calibration") else None
    return ModelVersion(**values)
