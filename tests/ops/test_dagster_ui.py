"""The Dagster UI in a real browser: dagster-webserver on loopback, headless Chromium (Debian's
package, driven by Playwright), the asset graph, each group, the catalog and asset pages with their
checks. Screenshots are kept in tests/ops/artifacts/ (git-ignored).

Needs /usr/bin/chromium (``scripts/install-test-tools.sh``): skipped locally without it, failed in CI.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import IN_CI
from tests.ops.procs import free_port, wait_http

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LOCATION = "rtml_assets.definitions"
UI_TIMEOUT_S = 90
EXPECTED_GROUPS = {"market_history", "features", "training", "models", "online", "monitoring"}
"""Groups the UI must show (add "online" and "monitoring" once definitions.py wires them)."""


@pytest.fixture(scope="module")
def browser_path() -> str:
    if CHROMIUM is None:
        message = "chromium is not installed (scripts/install-test-tools.sh installs Debian's package)"
        if IN_CI:
            pytest.fail(message + " (CI=true: a missing browser is a failure)")
        pytest.skip(message)
    return CHROMIUM


@pytest.fixture(scope="module")
def code_location(tmp_path_factory):
    """What the webserver will show: groups -> asset names, asset -> check names (same settings)."""
    from rtml_assets.definitions import defs

    home = tmp_path_factory.mktemp("ui")
    os.environ["RTML_HOME"] = str(home / "rtml")  # the process that loads the code location sees the same
    try:
        definitions = defs() if callable(defs) else defs
        graph = definitions.resolve_asset_graph()
    finally:
        del os.environ["RTML_HOME"]
    groups: dict[str, list[str]] = {}
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        if node.is_materializable or node.is_external:
            groups.setdefault(node.group_name, []).append(key.to_user_string())
    checks: dict[str, list[str]] = {}
    for check_key in graph.asset_check_keys:
        checks.setdefault(check_key.asset_key.to_user_string(), []).append(check_key.name)
    return home, groups, checks


@pytest.fixture(scope="module")
def webserver(code_location):
    home = code_location[0]
    dagster_home = home / "dagster_home"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "RTML_HOME": str(home / "rtml")}
    log = (home / "webserver.log").open("w")
    proc = subprocess.Popen(
        [str(Path(os.sys.executable).parent / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port),
         "-m", LOCATION], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/server_info", 240, lambda: proc.poll() is None)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.fixture(scope="module")
def page(browser_path, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / ".gitignore").write_text("*\n")
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=browser_path, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1600, "height": 1000},
        )
        yield context.new_page()
        context.close()


def _show(page, url: str, expected: list[str]) -> str:
    """Open ``url``, dismiss Dagster's newsletter prompt, wait until every expected text shows."""
    page.goto(url, timeout=UI_TIMEOUT_S * 1000)
    deadline = time.monotonic() + UI_TIMEOUT_S
    while True:
        skip = page.get_by_role("button", name="Skip")
        if skip.count() and skip.first.is_visible():
            skip.first.click()
        text = page.inner_text("body")
        missing = [name for name in expected if name not in text]
        if not missing and ("Loading..." not in text or time.monotonic() > deadline):
            return text  # every name shown, and the status rows loaded (or not worth waiting longer)
        if time.monotonic() > deadline:
            raise AssertionError(f"{url}: not shown after {UI_TIMEOUT_S}s: {missing}\n{text[:2000]}")
        page.wait_for_timeout(500)


def test_asset_graph_groups_assets_and_checks_in_chromium(webserver, page, code_location):
    _, groups, checks = code_location
    assert EXPECTED_GROUPS <= set(groups), f"groups of the code location: {sorted(groups)}"
    _show(page, f"{webserver}/asset-groups", sorted(groups))
    page.screenshot(path=str(ARTIFACTS / "asset_graph.png"))
    for group, assets in sorted(groups.items()):
        _show(page, f"{webserver}/locations/{LOCATION}/asset-groups/{group}", assets)
        page.screenshot(path=str(ARTIFACTS / f"group_{group}.png"))
    _show(page, f"{webserver}/assets", [a for assets in groups.values() for a in assets])
    page.screenshot(path=str(ARTIFACTS / "catalog.png"))
    assert checks, "the code location defines no asset checks"
    for asset, names in sorted(checks.items()):
        _show(page, f"{webserver}/assets/{asset}?view=checks", names)
        page.screenshot(path=str(ARTIFACTS / f"checks_{asset}.png"))
    text = _show(page, f"{webserver}/assets/validated_candles", ["validated_candles", "market_history", "Checks"])
    assert "External Asset" not in text  # the definition loaded, not a placeholder
    page.screenshot(path=str(ARTIFACTS / "asset_validated_candles.png"), full_page=True)
