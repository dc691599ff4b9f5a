"""Prediction API benchmark: rtml's Litestar app beside a textbook and a tuned FastAPI app, same server.

    .venv/bin/python -m bench.api [--quick] [--redis-url redis://127.0.0.1:6379/0]

Both apps run under uvicorn (uvloop + httptools, one worker, no access log) on loopback,
serve the same XGBoost model trained on the real BTC-USD 30m candles, and read the same
feature row from real Redis on every request (rtml through ``OnlineStore.aread_market``). The
tuned peer (async redis-py with hiredis, the same ONNX model, orjson) shows what rtml's design
buys beyond the model path. Load: an open-loop generator at fixed rates
(requests are due on a clock, never waiting for earlier answers; latency runs from the
moment a request is due; unanswered ones count as failed) and `wrk` at saturation (closed
loop, 32 connections). Servers are pinned to one core and load generators to the other; the
apps are measured in interleaved rounds, each after an untimed burst at the same load, and
the table shows medians.
Also: single-row inference latency of each path (XGBoost, ONNX Runtime, Treelite GTIL).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
CANDLES = ROOT / "data" / "btc_usd_30m_2017-2019.csv.gz"
FEATURES = ("log_return_1", "log_return_5", "rsi_14", "atr_14", "natr_14", "realized_vol_20", "roc_10",
            "sma_10", "ema_12", "mom_10")
FEATURE_SET = "bench-fs"
API_KEY = "bench-key-" + uuid.uuid4().hex
BODY = b'{"symbol":"BTC-USD"}'


# ---- data and model ----------------------------------------------------------------------
def real_features(rows: int = 5000) -> tuple[pd.DataFrame, np.ndarray]:
    import talib

    raw = pd.read_csv(CANDLES, nrows=rows)
    close, high, low = (raw[f"BTC.{c}"].to_numpy(np.float64) for c in ("close", "high", "low"))
    frame = pd.DataFrame({"close": close})
    frame["log_return_1"] = np.log(frame["close"] / frame["close"].shift(1))
    frame["log_return_5"] = np.log(frame["close"] / frame["close"].shift(5))
    frame["rsi_14"] = talib.RSI(close, 14)
    frame["atr_14"] = talib.ATR(high, low, close, 14)
    frame["natr_14"] = talib.NATR(high, low, close, 14)
    frame["realized_vol_20"] = frame["log_return_1"].rolling(20).std()
    frame["roc_10"] = talib.ROC(close, 10)
    frame["sma_10"] = talib.SMA(close, 10)
    frame["ema_12"] = talib.EMA(close, 12)
    frame["mom_10"] = talib.MOM(close, 10)
    target = np.log(frame["close"].shift(-1) / frame["close"]).to_numpy()
    keep = frame.notna().all(axis=1).to_numpy() & np.isfinite(target)
    return frame[keep].reset_index(drop=True), target[keep]


def train_and_register(home: Path, trees: int, depth: int):
    from rtml_core.registry import ModelRegistry
    from rtml_core.stores.offline import open_offline_store
    from rtml_core.training.models import fit_xgboost, xgboost_to_ubj

    frame, target = real_features()
    X = frame.loc[:, FEATURES].to_numpy(np.float64)
    cut = int(len(X) * 0.8)
    model = fit_xgboost(X[:cut], target[:cut], params={"n_estimators": trees, "max_depth": depth,
                                                       "learning_rate": 0.05}, nthread=2)
    residual_std = float(np.std(target[cut:] - model.predict(X[cut:])))
    offline_url = f"sqlite:///{home / 'offline.sqlite'}"
    registry = ModelRegistry(open_offline_store(offline_url), home / "artifacts", owns_store=True)
    meta = registry.register(
        kind="xgboost", artifact=xgboost_to_ubj(model), artifact_format="ubj", feature_names=FEATURES,
        feature_set_version=FEATURE_SET, timeframe="30m", horizon_s=1800, training_rows=cut,
        training_set_hash="bench", metrics={}, residual_std=residual_std, exchange="kraken", symbol="BTC-USD",
    )
    registry.promote(meta.version, "bench", force=True)
    model_path = home / "peer_model.ubj"
    model_path.write_bytes(xgboost_to_ubj(model))
    registry.close()
    return offline_url, model_path, residual_std, frame, X[cut:]


def onnx_model(model_path: Path, n_features: int, home: Path) -> Path:
    """The booster as ONNX, converted as rtml's served path converts it (for the tuned peer)."""
    import xgboost as xgb
    from onnxmltools.convert import convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    booster = xgb.Booster()
    booster.load_model(str(model_path))
    booster.feature_names = booster.feature_types = None  # onnxmltools reads indices from f0, f1, ...
    path = home / "peer_model.onnx"
    path.write_bytes(convert_xgboost(booster, initial_types=[("x", FloatTensorType([None, n_features]))])
                     .SerializeToString())
    return path


# ---- servers -----------------------------------------------------------------------------
SERVER_CPU, CLIENT_CPU = 1, 0
"""Servers on one core, load generators on the other: every app gets the same placement."""


def _pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {cpu})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(target: str, env: dict, factory: bool) -> tuple[subprocess.Popen, int]:
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", target, "--host", "127.0.0.1", "--port", str(port),
               "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning",
               "--workers", "1"]
    if factory:
        command.append("--factory")
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, preexec_fn=lambda: _pin(SERVER_CPU))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{target} exited: {process.stderr.read().decode()[-2000:]}")
        try:
            status, _ = asyncio.run(one_request(port))
            if status == 200:
                return process, port
        except OSError:
            pass
        time.sleep(0.3)
    process.kill()
    raise RuntimeError(f"{target} did not answer in 120 s")


def stop_server(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()


# ---- load --------------------------------------------------------------------------------
def request_bytes(port: int) -> bytes:
    return (f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"X-API-Key: {API_KEY}\r\nContent-Length: {len(BODY)}\r\n\r\n").encode() + BODY


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
    return status, await reader.readexactly(length)


async def one_request(port: int) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request_bytes(port))
        return await read_response(reader)
    finally:
        writer.close()


async def fixed_rate(port: int, rate: float, duration: float, connections: int = 64) -> dict:
    """Open loop: request i is due at start + i / rate and goes out on the next idle connection.

    Latency runs from the moment a request is due (after the dispatcher hands it over), so time
    spent waiting for a free connection behind slow answers counts. Requests still unanswered
    at ``duration + grace`` are counted as dropped, with their wait so far as their latency.
    """
    payload = request_bytes(port)
    queue: asyncio.Queue = asyncio.Queue()
    latencies: list[float] = []
    errors = [0]

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while (due := await queue.get()) is not None:
                writer.write(payload)
                status, _ = await read_response(reader)
                latencies.append(time.perf_counter() - due)
                if status != 200:
                    errors[0] += 1
        finally:
            writer.close()

    workers = [asyncio.create_task(worker()) for _ in range(connections)]
    await asyncio.sleep(0.2)
    total = int(rate * duration)
    start = time.perf_counter()
    for i in range(total):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait(time.perf_counter())
    for _ in workers:
        queue.put_nowait(None)
    _, pending = await asyncio.wait(workers, timeout=1.0 + duration / 2)
    end = time.perf_counter()
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    answered = len(latencies)
    waiting = []
    while not queue.empty():
        due = queue.get_nowait()
        if due is not None:
            waiting.append(end - due)
    dropped = total - answered
    waiting += [end - start - duration] * max(0, dropped - len(waiting))  # in flight when stopped
    values = np.array(latencies + waiting) * 1e3
    return {"rps": answered / (end - start), "p50": float(np.percentile(values, 50)),
            "p99": float(np.percentile(values, 99)), "errors": errors[0] + dropped, "n": answered}


def saturate_wrk(port: int, duration: float, connections: int = 32) -> dict:
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = '{BODY.decode()}'\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["X-API-Key"] = "{API_KEY}"\n'
    )
    out = subprocess.run(["taskset", "-c", str(CLIENT_CPU), "wrk", "-t1", f"-c{connections}", f"-d{max(1, int(duration))}s", "--latency",
                          "-s", str(script), f"http://127.0.0.1:{port}/v1/predict"],
                         capture_output=True, text=True, check=True).stdout
    script.unlink()

    def ms(label: str) -> float:
        match = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        value, unit = float(match.group(1)), match.group(2)
        return value / 1e3 if unit == "us" else value * 1e3 if unit == "s" else value

    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), "p50": ms("50"),
            "p99": ms("99"), "errors": int(non_2xx.group(1)) if non_2xx else 0, "n": None}


async def saturate_python(port: int, duration: float, connections: int = 32) -> dict:
    payload = request_bytes(port)
    latencies: list[float] = []
    errors = [0]
    deadline = time.perf_counter() + duration

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            writer.write(payload)
            status, _ = await read_response(reader)
            latencies.append(time.perf_counter() - sent)
            errors[0] += status != 200
        writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    values = np.array(latencies) * 1e3
    return {"rps": len(values) / (time.perf_counter() - start), "p50": float(np.percentile(values, 50)),
            "p99": float(np.percentile(values, 99)), "errors": errors[0], "n": len(values)}


def one_load(port: int, load: str, duration: float) -> dict:
    import uvloop

    if load == "saturation":  # each measurement follows an untimed burst at the same load
        if shutil.which("wrk"):
            saturate_wrk(port, 1.0)
            return saturate_wrk(port, duration)
        uvloop.run(saturate_python(port, 1.0))
        return uvloop.run(saturate_python(port, duration))
    rate = int(load.split()[0])
    uvloop.run(fixed_rate(port, rate, 0.5))
    return uvloop.run(fixed_rate(port, rate, duration))


def median_of(rounds: list[dict]) -> dict:
    return {key: float(np.median([r[key] for r in rounds])) for key in ("rps", "p50", "p99")} | {
        "errors": int(sum(r["errors"] for r in rounds)), "p99s": [r["p99"] for r in rounds]}


# ---- inference paths ---------------------------------------------------------------------
def inference_latency(model_path: Path, holdout: np.ndarray, repeat: int) -> list[tuple[str, float, float]]:
    import xgboost as xgb

    from api.inference import tree_predictor

    booster = xgb.Booster()
    booster.load_model(str(model_path))
    regressor = xgb.XGBRegressor()
    regressor.load_model(str(model_path))
    rows = holdout.astype(np.float32)
    reference = booster.inplace_predict(rows)
    out = []

    def timed(name, predict, diff, budget_s: float = 2.0):
        for _ in range(20):
            predict(rows[:1])
        done, start = 0, time.perf_counter()
        while done < repeat and time.perf_counter() - start < budget_s:
            i = done % len(rows)
            predict(rows[i: i + 1])
            done += 1
        out.append((name, (time.perf_counter() - start) / done * 1e6, diff))

    timed("XGBRegressor.predict (textbook)", lambda x: regressor.predict(x), 0.0)
    timed("Booster.inplace_predict", lambda x: booster.inplace_predict(x), 0.0)
    single = xgb.Booster(params={"nthread": 1})
    single.load_model(str(model_path))
    timed("Booster.inplace_predict, nthread=1", lambda x: single.inplace_predict(x), 0.0)
    for path in ("onnxruntime", "treelite-gtil"):
        predictor = tree_predictor(booster, rows.shape[1], rows, order=(path,))
        served = np.array([predictor.predict(rows[i: i + 1]) for i in range(len(rows))])
        timed(f"{predictor.path} (served path)" if predictor.path == path else f"{path} REFUSED",
              predictor.predict, float(np.max(np.abs(served - reference))))
    return out


# ---- main --------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--redis-url", default=os.environ.get("RTML_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    args = parser.parse_args()
    duration = 2.0 if args.quick else 5.0
    rounds = 1 if args.quick else 3
    rates = [100, 500] if args.quick else [100, 500, 1000]
    trees, depth = (20, 4) if args.quick else (100, 6)

    import redis

    from rtml_core.schemas import FeatureRow
    from rtml_core.stores.online import open_online_store

    _pin(CLIENT_CPU)
    home = Path(tempfile.mkdtemp(prefix="rtml-bench-api-"))
    prefix = f"rtmlbench:{uuid.uuid4().hex[:8]}"
    try:
        offline_url, model_path, residual_std, frame, holdout = train_and_register(home, trees, depth)
        store = open_online_store(args.redis_url, prefix)
        last = frame.iloc[-1]
        store.write_rows([FeatureRow(exchange="kraken", symbol="BTC-USD", timeframe="30m",
                                     event_time_ns=time.time_ns(), feature_set_version=FEATURE_SET,
                                     values={n: float(last[n]) for n in (*FEATURES, "close")})])
        store.close()
        print(f"model: XGBoost {trees} trees, depth {depth}, {len(FEATURES)} features, real BTC-USD 30m "
              f"candles; Redis {args.redis_url}; {os.cpu_count()} CPUs, load avg "
              f"{os.getloadavg()[0]:.1f}", flush=True)

        print("\nsingle-row inference (same model)")
        print(f"{'path':38} {'us/row':>8} {'max |diff| vs XGBoost':>22}")
        for name, micros, diff in inference_latency(model_path, holdout, 2000 if args.quick else 20000):
            print(f"{name:38} {micros:8.1f} {diff:22.2e}")

        onnx_path = onnx_model(model_path, len(FEATURES), home)
        common = {"RTML_HOME": str(home), "RTML_OFFLINE_URL": offline_url, "RTML_ONLINE_URL": args.redis_url,
                  "RTML_ONLINE_PREFIX": prefix, "RTML_ARTIFACTS_DIR": str(home / "artifacts"),
                  "RTML_API_KEYS": API_KEY, "RTML_LOG_LEVEL": "warning", "RTML_API_MODEL_POLL_S": "5"}
        apps = [
            ("rtml Litestar (no rate limit)", "api.app:app_from_environment", True,
             {**common, "RTML_API_RATE_LIMIT": "0"}),
            ("rtml Litestar (rate limit on)", "api.app:app_from_environment", True,
             {**common, "RTML_API_RATE_LIMIT": "1000000"}),
            ("FastAPI textbook", "bench.peers.fastapi_app:app", False,
             {"PEER_REDIS_URL": args.redis_url, "PEER_FEATURES_KEY_PREFIX": prefix,
              "PEER_MODEL_PATH": str(model_path), "PEER_FEATURE_NAMES": ",".join(FEATURES),
              "PEER_RESIDUAL_STD": repr(residual_std), "PEER_HORIZON_S": "1800", "PEER_TIMEFRAME": "30m"}),
            ("FastAPI tuned", "bench.peers.fastapi_tuned:app", False,
             {"PEER_REDIS_URL": args.redis_url, "PEER_FEATURES_KEY_PREFIX": prefix,
              "PEER_ONNX_PATH": str(onnx_path), "PEER_FEATURE_NAMES": ",".join(FEATURES),
              "PEER_RESIDUAL_STD": repr(residual_std), "PEER_HORIZON_S": "1800", "PEER_TIMEFRAME": "30m"}),
        ]
        servers = {}
        try:
            for name, target, factory, env in apps:
                servers[name] = start_server(target, env, factory)
            import uvloop

            for _, port in servers.values():
                uvloop.run(fixed_rate(port, 200, 1.0))  # warm-up
            loads = [f"{rate} req/s" for rate in rates] + ["saturation"]
            raw: dict[str, dict[str, list[dict]]] = {name: {load: [] for load in loads} for name in servers}
            for load in loads:  # rounds interleave the apps, so a noisy neighbour hits all of them
                for _ in range(rounds):
                    for name, (_, port) in servers.items():
                        raw[name][load].append(one_load(port, load, duration))
                print(f"measured {load}", flush=True)
        finally:
            for process, _ in servers.values():
                stop_server(process)
        results = {name: {load: median_of(raw[name][load]) for load in loads} for name in raw}

        print(f"\nPOST /v1/predict over loopback, uvicorn (uvloop, httptools), 1 worker each; median of "
              f"{rounds} interleaved round(s) of {duration:g} s; saturation: "
              f"{'wrk -c32' if shutil.which('wrk') else 'python closed loop, 32 connections'}")
        print(f"{'app':32} {'load':12} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'failed':>7}  p99 per round")
        for load in loads:
            for name in results:
                r = results[name][load]
                rounds_text = " ".join(f"{v:.1f}" for v in r["p99s"])
                print(f"{name:32} {load:12} {r['rps']:9.0f} {r['p50']:8.2f} {r['p99']:8.2f} {r['errors']:7d}  "
                      f"{rounds_text}")
        ours = results["rtml Litestar (no rate limit)"]["saturation"]["rps"]
        peer = results["FastAPI textbook"]["saturation"]["rps"]
        tuned = results["FastAPI tuned"]["saturation"]["rps"]
        print(f"\nsaturated throughput: rtml {ours:.0f} req/s vs textbook {peer:.0f} req/s = {ours / peer:.2f}x "
              f"(target >= 3x), vs tuned {tuned:.0f} req/s = {ours / tuned:.2f}x; rtml p99 at 500 req/s: "
              f"{results['rtml Litestar (no rate limit)']['500 req/s']['p99']:.2f} ms (target < 5 ms); "
              f"load average now {os.getloadavg()[0]:.1f}")
    finally:
        client = redis.Redis.from_url(args.redis_url)
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
