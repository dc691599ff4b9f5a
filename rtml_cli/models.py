"""``rtml models list | show VERSION | promote VERSION``: the model registry from the shell, one
champion per market, promotion only through the registry's gate."""

from __future__ import annotations

import json

import click

from rtml_core.settings import Settings


def _registry():
    from rtml_core.registry import ModelRegistry
    from rtml_core.stores.offline import open_offline_store

    settings = Settings()
    return ModelRegistry(open_offline_store(settings.resolved_offline_url), settings.resolved_artifacts_dir,
                         owns_store=True)


def _num(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}"


@click.group("models")
def models() -> None:
    """Registered models, their holdout metrics, and the champion the API serves."""


def _market(v) -> str:
    return f"{v.exchange} {v.symbol} {v.timeframe}"


@models.command("list")
@click.option("--exchange", default=None, help="Only versions of this exchange.")
@click.option("--symbol", default=None, help="Only versions of this BASE-QUOTE symbol.")
@click.option("--timeframe", default=None, help="Only versions of this timeframe.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per version.")
def list_models(exchange: str | None, symbol: str | None, timeframe: str | None, as_json: bool) -> None:
    """Every registered version (baselines included), oldest first; '*' marks each market's champion."""
    if symbol is not None:
        from rtml_core.symbols import normalize_symbol

        symbol = normalize_symbol(symbol)
    registry = _registry()
    try:
        versions = registry.list(exchange, symbol, timeframe)
        champions = {meta.version for _, meta in registry.champions().values()}
        verdicts = {v.version: registry.verdict(v.version) for v in versions}
    finally:
        registry.close()
    if as_json:
        for version in versions:
            click.echo(json.dumps({**version.to_dict(), "champion": version.version in champions,
                                   "verdict": verdicts[version.version]}))
        return
    if not versions:
        click.echo("no models registered yet (rtml train, rtml demo or the training assets in dagster dev)")
        return
    click.echo(f"{'':1} {'version':>7}  {'kind':15} {'market':26} {'H':>6}  {'loss(MSE)':>10} {'skill/zero':>10} "
               f"{'skill/mean10':>12} {'Brier':>6}  {'verdict':8} created")
    for v in versions:
        m = v.metrics
        verdict = verdicts[v.version]
        judged = "-" if verdict is None else "passed" if verdict["passed"] else "failed"
        loss = m.get("loss")
        click.echo(
            f"{'*' if v.version in champions else ' '} {v.version:>7}  {v.kind:15} {_market(v):26} "
            f"{v.horizon_s:>5}s  {f'{loss:.3e}' if loss is not None else '-':>10} "
            f"{_num(m.get('skill_vs_zero')):>10} {_num(m.get('skill_vs_mean10')):>12} "
            f"{_num(m.get('brier'), 3):>6}  {judged:8} {v.to_dict()['created_at'][:19]}"
        )


@models.command("show")
@click.argument("version", type=int)
def show(version: int) -> None:
    """Everything the registry knows about VERSION, as JSON: metrics, calibration, which fit is
    served, lineage, the gate's verdict, its promotions and the audit table (who, when, why)."""
    registry = _registry()
    try:
        meta = registry.get(version)
        champion = registry.champion_of(meta.market)
        promotions = [p.to_dict() for p in registry.promotions(meta.market) if p.version == version]
        verdict = registry.verdict(version)
        audit = registry.audit(version)
    finally:
        registry.close()
    document = {
        **meta.to_dict(),
        "market": {"exchange": meta.exchange, "symbol": meta.symbol, "timeframe": meta.timeframe,
                   "horizon_s": meta.horizon_s},
        "champion": champion is not None and champion.version == version,
        "verdict": verdict,
        "promotions": promotions,
        "audit": audit,
    }
    click.echo(json.dumps(document, indent=2, sort_keys=True))


@models.command("promote")
@click.argument("version", type=int)
@click.option("--force", is_flag=True, help="Promote past the gate (a failed or unjudged version); needs --reason.")
@click.option("--reason", default=None, help="Why (kept in the promotion history and the audit table).")
def promote(version: int, force: bool, reason: str | None) -> None:
    """Make VERSION its market's champion if the gate passed it (or it was champion before: a
    rollback). A failed or unjudged version is refused with exit 1 unless --force --reason TEXT."""
    from rtml_core.errors import InputError
    from rtml_core.registry import PromotionRefused

    if force and not (reason and reason.strip()):
        raise InputError("--force needs --reason TEXT: why the gate is overridden (recorded in the audit table)")
    registry = _registry()
    try:
        registry.load_model(version)  # refuse a version whose artifact is missing or tampered with
        try:
            promotion = registry.promote(version, reason or "promoted from the command line", force=force)
        except PromotionRefused as refused:
            click.echo(f"refused: {refused}", err=True)
            raise SystemExit(1) from None
    finally:
        registry.close()
    market = f"{promotion.exchange} {promotion.symbol} {promotion.timeframe} H={promotion.horizon_s}s"
    click.echo(
        f"model version {version} is now the champion of {market} ({promotion.action}; previous: "
        f"{promotion.previous_version or 'none'}, epoch {promotion.epoch})"
    )
