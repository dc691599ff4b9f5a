"""``rtml up``: the plan it makes, honcho's supervision, and the whole stack started and stopped."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from rtml_cli.up import DEFAULT_REPLAY, UpOptions, plan_stack
from rtml_core.errors import InputError
from rtml_core.settings import Settings
from tests.ops.procs import alive_in_groups, free_port, pid_alive, wait_http

REPO = Path(__file__).resolve().parents[2]


def _clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RTML_", "DAGSTER_"))}
    return {**env, "RTML_HOME": str(home), "PYTHONUNBUFFERED": "1"}


def test_plan_embedded_replay(tmp_path):
    settings = Settings(home=tmp_path)
    services, env = plan_stack(settings, UpOptions(api_port=8100), {})
    names = [s.name for s in services]
    assert names == ["dagster-webserver", "dagster-daemon", "sidecar", "api"]
    assert env["DAGSTER_HOME"] == str(tmp_path.resolve() / "dagster_home")
    assert (tmp_path / "dagster_home" / "dagster.yaml").exists()
    sidecar = services[2]
    assert (
        sidecar.may_finish
        and str(DEFAULT_REPLAY) in sidecar.argv
        and "--no-checkpoint" in sidecar.argv
    )
    api = services[3]
    assert api.env == {"RTML_API_AUTH_DISABLED": "true", "RTML_API_SERVE_STALE": "true"}
    assert api.url == "http://127.0.0.1:8100" and "-m" in services[0].argv


def test_plan_postgres_dagster_and_live_exchange(tmp_path):
    settings = Settings(home=tmp_path, api_keys="k1")
    environ = {"RTML_DAGSTER_PG_URL": "postgresql+psycopg2://postgres@127.0.0.1:5432/dagster"}
    services, env = plan_stack(
        settings, UpOptions(exchange="kraken", symbols="BTC-USD,ETH-USD"), environ
    )
    home = Path(env["DAGSTER_HOME"])
    assert home == tmp_path.resolve() / "dagster_pg"
    assert (home / "dagster.yaml").read_text() == (REPO / "dagster.yaml").read_text()
    sidecar = next(s for s in services if s.name == "sidecar")
    assert (
        not sidecar.may_finish
        and "--replay" not in sidecar.argv
        and "BTC-USD,ETH-USD" in sidecar.argv
    )
    assert (
        next(s for s in services if s.name == "api").env == {}
    )  # keys set, live data: nothing overridden


def test_the_schedules_rtml_up_says_are_on_run_by_default_and_no_other(tmp_path):
    import dagster as dg

    from rtml_assets.definitions import build_definitions
    from rtml_cli.up import RUNNING_BY_DEFAULT, describe

    settings = Settings(home=tmp_path)
    services, env = plan_stack(settings, UpOptions(), {})
    (line,) = [text for text in describe(settings, services, env) if text.strip().startswith("schedules")]
    assert all(name in line for name in RUNNING_BY_DEFAULT) and line.endswith("switch them in the UI")
    defs = build_definitions(settings)
    repo = defs.get_repository_def()
    running = {s.name for s in repo.schedule_defs if s.default_status == dg.DefaultScheduleStatus.RUNNING}
    running |= {s.name for s in repo.sensor_defs if s.default_status == dg.DefaultSensorStatus.RUNNING}
    assert running == set(RUNNING_BY_DEFAULT)


def test_plan_refuses_an_open_api_without_keys(tmp_path):
    with pytest.raises(InputError, match="RTML_API_KEYS"):
        plan_stack(Settings(home=tmp_path), UpOptions(host="0.0.0.0"), {})
    with pytest.raises(InputError, match="not found"):
        plan_stack(Settings(home=tmp_path), UpOptions(replay_file=tmp_path / "nope.json"), {})


def test_up_refuses_unreachable_stores_before_starting_anything(tmp_path):
    env = _clean_env(tmp_path / "home")
    down = {**env, "RTML_OFFLINE_URL": f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/rtml"}
    proc = subprocess.run(check=False, args=[sys.executable, "-m", "rtml_cli", "up"], capture_output=True, text=True,
                          cwd=tmp_path, env=down, timeout=120)
    assert proc.returncode == 2 and "error: offline store postgresql+psycopg://postgres@127.0.0.1" in proc.stderr
    assert "started (pid=" not in proc.stdout
    down = {**env, "RTML_ONLINE_URL": f"redis://127.0.0.1:{free_port()}/0"}
    proc = subprocess.run(check=False, args=[sys.executable, "-m", "rtml_cli", "up"], capture_output=True, text=True,
                          cwd=tmp_path, env=down, timeout=120)
    assert proc.returncode == 2 and "error: online store redis://127.0.0.1:" in proc.stderr, proc.stderr
    assert (tmp_path / "home" / "offline.sqlite").exists()  # the embedded offline store was created first


SUPERVISE = textwrap.dedent("""
    import sys
    from rtml_cli.up import Service, run_stack
    py = sys.executable
    services = [
        Service("quick", (py, "-c", "print('replay done')"), may_finish=True),
        Service("long", (py, "-c", "import time; print('serving', flush=True); time.sleep(120)")),
    ]
    if sys.argv[1] == "fail":
        services.append(Service("broken", (py, "-c", "import time; time.sleep(1); raise SystemExit(3)")))
    sys.exit(run_stack(services, {}))
""")


def _started_pids(log: str) -> dict[str, int]:
    return {
        name: int(pid) for name, pid in re.findall(r"system\s+\| (\S+) started \(pid=(\d+)\)", log)
    }


def test_a_finished_replay_stops_nothing_and_ctrl_c_stops_all(tmp_path):
    out = tmp_path / "out.log"
    with out.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-c", SUPERVISE, "ok"], stdout=sink, stderr=subprocess.STDOUT, cwd=REPO
        )
    deadline = time.monotonic() + 60
    while (
        "quick stopped (rc=0)" not in out.read_text() or "long   | serving" not in out.read_text()
    ):
        assert time.monotonic() < deadline and proc.poll() is None, out.read_text()
        time.sleep(0.2)
    time.sleep(1.0)
    assert proc.poll() is None  # the finished service did not take the stack down
    pids = _started_pids(out.read_text())
    assert pid_alive(pids["long"])
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=40) == 130
    log = out.read_text()
    assert "SIGINT received" in log and "long stopped" in log
    assert not alive_in_groups(set(pids.values()))


def test_a_failing_service_stops_the_stack_with_its_status(tmp_path):
    proc = subprocess.run(
        check=False,
        args=[sys.executable, "-c", SUPERVISE, "fail"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert proc.returncode == 3, proc.stdout
    assert "broken stopped (rc=3)" in proc.stdout and "sending SIGTERM to long" in proc.stdout


def test_rtml_up_starts_everything_and_ctrl_c_stops_all(tmp_path):
    ports = {"dagster": free_port(), "api": free_port(), "stream": free_port()}
    out = tmp_path / "up.log"
    with out.open("w") as sink:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rtml_cli",
                "up",
                "--dagster-port",
                str(ports["dagster"]),
                "--api-port",
                str(ports["api"]),
                "--stream-port",
                str(ports["stream"]),
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env=_clean_env(tmp_path / "home"),
            start_new_session=True,
        )
    try:
        alive = lambda: proc.poll() is None
        health = wait_http(f"http://127.0.0.1:{ports['api']}/health", 180, alive)
        assert health.json()["status"] == "ok"
        wait_http(f"http://127.0.0.1:{ports['dagster']}/server_info", 240, alive)
        sidecar = wait_http(f"http://127.0.0.1:{ports['stream']}/health", 60, alive).json()
        assert sidecar["source"] == "replay" and sidecar["markets"] == ["kraken:BTC-USD"]
        deadline = time.monotonic() + 30
        while "the system is up" not in out.read_text() and time.monotonic() < deadline:
            time.sleep(0.5)
        log = out.read_text()
        assert "all 3 services answer: the system is up" in log
        assert re.search(rf"rtml up\s+\| api ready \(http://127.0.0.1:{ports['api']}/health\)", log)
        assert f"Dagster UI      http://127.0.0.1:{ports['dagster']}" in log
        assert re.search(r"\d\d:\d\d:\d\d api\s+\| ", log)  # forwarded with a prefix
        pids = _started_pids(log)
        assert set(pids) == {"dagster-webserver", "dagster-daemon", "sidecar", "api"}
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
        leftovers = alive_in_groups(set(pids.values()))
        assert not leftovers, (
            f"still running after rtml up stopped: {leftovers}\n{out.read_text()[-3000:]}"
        )
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
