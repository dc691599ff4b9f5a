"""Single-row inference: a compiled tree path when it provably agrees with XGBoost, else XGBoost.

A compiled path is used only after it matched ``Booster.inplace_predict`` to ``tolerance`` on
every verification row: the real rows given (the holdout, when the registry keeps one) plus
probe rows built from the model's own split thresholds and their float32 neighbours, so every
branch of every tree is exercised on both sides of its threshold.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

AGREEMENT_TOLERANCE = 1e-6
PROBE_ROWS = 512


@dataclass(frozen=True, slots=True)
class Predictor:
    """``predict(x)`` maps one float32 row of shape (1, n_features) to the model's output."""

    path: str  # "onnxruntime" | "treelite-gtil" | "xgboost" | "python"
    predict: Callable[[np.ndarray], float]
    dtype: type = np.float32  # the row dtype the model computes in
    max_abs_diff: float | None = None  # against XGBoost on the verification rows
    rejected: tuple[str, ...] = ()  # compiled paths tried and refused, with the reason


def probe_rows(booster, n_features: int, rows: int = PROBE_ROWS, seed: int = 0) -> np.ndarray:
    """Rows whose values sit on, just below and just above the model's split thresholds."""
    frame = booster.trees_to_dataframe()
    splits = frame[frame["Feature"] != "Leaf"]
    names = booster.feature_names or [f"f{i}" for i in range(n_features)]
    index = {name: i for i, name in enumerate(names)}
    rng = np.random.default_rng(seed)
    out = rng.normal(size=(rows, n_features)).astype(np.float32)
    for name, group in splits.groupby("Feature"):
        column = index[name]
        values = group["Split"].to_numpy(dtype=np.float32)
        candidates = np.concatenate([
            values,
            np.nextafter(values, np.float32(-np.inf)),
            np.nextafter(values, np.float32(np.inf)),
        ])
        out[:, column] = rng.choice(candidates, size=rows)
    return out


def _onnx_predictor(booster, n_features: int) -> Callable[[np.ndarray], float]:
    import onnxruntime
    from onnxmltools.convert import convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    anonymous = booster.copy()
    anonymous.feature_names = None  # onnxmltools reads feature indices from names like f3
    anonymous.feature_types = None
    model = convert_xgboost(anonymous, initial_types=[("x", FloatTensorType([None, n_features]))])
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    output = [session.get_outputs()[0].name]
    run = session.run

    def predict(x: np.ndarray) -> np.ndarray:
        return run(output, {"x": x})[0].reshape(-1)

    return predict


def _treelite_predictor(booster, n_features: int) -> Callable[[np.ndarray], float]:
    import treelite
    import treelite.gtil

    model = treelite.frontend.from_xgboost(booster)
    gtil_predict = treelite.gtil.predict

    def predict(x: np.ndarray) -> np.ndarray:
        return gtil_predict(model, x, nthread=1).reshape(-1)

    return predict


_COMPILERS: dict[str, Callable] = {"onnxruntime": _onnx_predictor, "treelite-gtil": _treelite_predictor}


def tree_predictor(
    booster,
    n_features: int,
    real_rows: np.ndarray | None = None,
    tolerance: float = AGREEMENT_TOLERANCE,
    order: Sequence[str] = ("onnxruntime", "treelite-gtil"),
) -> Predictor:
    """The fastest path that agrees with XGBoost within ``tolerance``; XGBoost itself otherwise."""
    rows = probe_rows(booster, n_features)
    if real_rows is not None and len(real_rows):
        rows = np.vstack([np.asarray(real_rows, dtype=np.float32), rows])
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    reference = booster.inplace_predict(rows).reshape(-1).astype(np.float64)
    rejected: list[str] = []
    for name in order:
        try:
            batch = _COMPILERS[name](booster, n_features)
            candidate = np.asarray(batch(rows), dtype=np.float64)
            single = np.array([batch(rows[i : i + 1])[0] for i in range(min(32, len(rows)))])
        except Exception as error:  # noqa: BLE001 - any failure of a compiled path means fallback
            rejected.append(f"{name}: {type(error).__name__}: {error}"[:200])
            continue
        diff = float(np.max(np.abs(candidate - reference)))
        diff = max(diff, float(np.max(np.abs(single - reference[: len(single)]))))
        if diff <= tolerance:
            return Predictor(path=name, predict=_first(batch), max_abs_diff=diff, rejected=tuple(rejected))
        rejected.append(f"{name}: max |diff| {diff:.3g} > {tolerance:g}")
    log.warning("no compiled path agrees with XGBoost; serving XGBoost: %s", rejected)
    inplace = booster.inplace_predict
    return Predictor(path="xgboost", predict=lambda x: float(inplace(x)[0]), max_abs_diff=0.0,
                     rejected=tuple(rejected))


def _first(batch: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], float]:
    def predict(x: np.ndarray) -> float:
        return float(batch(x)[0])

    return predict


def python_predictor(predict_rows: Callable[[np.ndarray], Sequence[float]]) -> Predictor:
    """Wrap a model with no compiled path (Lasso, baselines): its own predict on one row."""
    return Predictor(path="python", predict=lambda x: float(np.asarray(predict_rows(x)).reshape(-1)[0]),
                     dtype=np.float64)
