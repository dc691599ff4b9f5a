"""The promotion gate: a blocking check on the candidate, so a failing candidate never becomes
champion (``champion_model`` downstream is skipped) and the check's metadata says why."""


import dagster as dg

from rtml_assets.training.assets import RegisteredModel, candidate_model, metrics_metadata
from rtml_assets.training.config import PromotionConfig
from rtml_assets.training.resources import ModelRegistryResource


def promotion_verdict(metrics: dict, config: PromotionConfig) -> tuple[bool, str]:
    """(passed, why) for a candidate's holdout metrics under ``config``."""
    skill_mean10 = float(metrics["skill_vs_mean10"])
    skill_zero = float(metrics["skill_vs_zero"])
    reasons = []
    if not skill_mean10 > config.margin:
        reasons.append(
            f"skill against the mean-of-last-10 baseline is {skill_mean10:.4f}, not above the margin {config.margin}"
        )
    if config.require_beat_zero_return and not skill_zero > config.margin:
        reasons.append(
            f"skill against the zero-return baseline is {skill_zero:.4f}, not above the margin {config.margin}"
        )
    if reasons:
        return False, "; ".join(reasons) + ": the champion stays"
    return True, (
        f"skill {skill_mean10:.4f} against the mean-of-last-10 baseline beats the margin {config.margin} "
        f"(against zero return: {skill_zero:.4f})"
    )


@dg.asset_check(
    asset=candidate_model,
    blocking=True,
    description="The candidate beats the mean-of-last-10 baseline on the holdout by the configured margin.",
)
def check_candidate_beats_baseline(
    config: PromotionConfig, candidate_model: RegisteredModel, model_registry: ModelRegistryResource
) -> dg.AssetCheckResult:
    passed, why = promotion_verdict(candidate_model.metrics, config)
    champion = model_registry.get_registry().champion()
    return dg.AssetCheckResult(
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=why,
        metadata={
            "why": why,
            "candidate_version": dg.MetadataValue.int(candidate_model.version),
            "candidate_kind": candidate_model.kind,
            "margin": dg.MetadataValue.float(config.margin),
            "require_beat_zero_return": dg.MetadataValue.bool(config.require_beat_zero_return),
            "current_champion": dg.MetadataValue.int(champion.version) if champion else "none",
            **metrics_metadata(candidate_model.metrics),
        },
    )


TRAINING_CHECKS = [check_candidate_beats_baseline]
