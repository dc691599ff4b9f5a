"""``rtml models list | show VERSION | promote VERSION``: the model registry from the shell."""

from __future__ import annotations

import json

import click

from rtml_core.settings import Settings


def _registry():
    from rtml_core.registry import ModelRegistry

    settings = Settings()
    return ModelRegistry(settings.resolved_offline_url, settings.resolved_artifacts_dir)


def _num(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}"


@click.group("models")
def models() -> None:
    """Registered models, their holdout metrics, and the champion the API serves."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per version.")
def list_models(as_json: bool) -> None:
    """Every registered version, oldest first; '*' marks the champion."""
    registry = _registry()
    try:
        versions = registry.list()
        champion = registry.champion()
    finally:
        registry.close()
    champion_version = champion.version if champion else None
    if as_json:
        for version in versions:
            click.echo(json.dumps({**version.to_dict(), "champion": version.version == champion_version}))
        return
    if not versions:
        click.echo("no models registered yet (materialize the training assets: rtml demo or dagster dev)")
        return
    header = (f"{'':1} {'version':>7}  {'kind':8} {'market':28} {'H':>6}  {'skill/mean10':>12} "
              f"{'skill/zero':>10} {'dir.acc':>7}  created")
    click.echo(header)
    for v in versions:
        market = f"{v.exchange} {v.symbol} {v.timeframe}"
        m = v.metrics
        click.echo(
            f"{'*' if v.version == champion_version else ' '} {v.version:>7}  {v.kind:8} {market:28} "
            f"{v.horizon_s:>5}s  {_num(m.get('skill_vs_mean10')):>12} {_num(m.get('skill_vs_zero')):>10} "
            f"{_num(m.get('directional_accuracy'), 3):>7}  {v.to_dict()['created_at'][:19]}"
        )


@models.command("show")
@click.argument("version", type=int)
def show(version: int) -> None:
    """Everything the registry knows about VERSION, as JSON (metrics, lineage, promotions)."""
    registry = _registry()
    try:
        meta = registry.get(version)
        champion = registry.champion()
        promotions = [p.to_dict() for p in registry.promotions() if p.version == version]
    finally:
        registry.close()
    document = {
        **meta.to_dict(),
        "champion": champion is not None and champion.version == version,
        "promotions": promotions,
    }
    click.echo(json.dumps(document, indent=2, sort_keys=True))


@models.command("promote")
@click.argument("version", type=int)
@click.option("--reason", default="manual promotion from the command line", show_default=True,
              help="Why (kept in the promotion history).")
def promote(version: int, reason: str) -> None:
    """Make VERSION the champion (also a rollback: promote the earlier version)."""
    registry = _registry()
    try:
        registry.load_model(version)  # refuse a version whose artifact is missing or tampered with
        promotion = registry.promote(version, reason, actor="cli")
    finally:
        registry.close()
    click.echo(
        f"model version {version} is now the champion (previous: {promotion.previous_version or 'none'}, "
        f"epoch {promotion.epoch})"
    )
