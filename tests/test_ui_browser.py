"""The Dagster UI in a real browser: a small graph materialised on the `test` profile, the webserver
on a free loopback port, Debian's headless Chromium driven by Playwright (no browser download).

Asserts what a person would look for: the task's asset group shows its lineage, and the asset pages
render key metadata (the student's score, the cost table, the loss-curve image, the report's table).
Screenshots are kept as artefacts under ``$DISTIL_TEST_ARTIFACTS`` (default ``<repo>/test-artifacts/ui``).
With ``DISTIL_UPDATE_DOCS_SCREENSHOTS=1`` (``make screenshots``) the lineage and the report's table are
also written, downscaled, to ``docs/images/`` for the README.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from distil_platform.serving.server import wait_until_healthy

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TASK = "text2sql"
STAGES = ["", "_teacher_data", "_student", "_student_eval", "_baseline_evals", "_frontier_evals", "_throughput",
          "_cost_table"]

pytestmark = pytest.mark.slow


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run installs it)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("playwright (Python) is not installed")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env.update(DAGSTER_HOME=str(home), DISTIL_PROFILE="test", LITELLM_LOCAL_MODEL_COST_MAP="True",
               HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


@pytest.fixture(scope="module")
def materialised_home(tmp_path_factory) -> Path:
    _chromium()
    home = tmp_path_factory.mktemp("ui_home")
    shutil.copy(REPO / "distil_platform" / "config" / "dagster.yaml", home / "dagster.yaml")
    env = _env(home)
    env.setdefault("DISTIL_MODELS_DIR", str(tmp_path_factory.getbasetemp() / "models"))
    out = subprocess.run([sys.executable, "-m", "dagster", "asset", "materialize", "-m", "distil_platform.definitions",
                          "--select", f"{TASK}*"], cwd=REPO, env=env, capture_output=True, text=True, timeout=1500,
                         check=False)
    assert out.returncode == 0, out.stderr[-4000:]
    return home


@pytest.fixture(scope="module")
def webserver(materialised_home):
    port = _free_port()
    log = open(materialised_home / "webserver.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "dagster_webserver", "-w", "workspace.yaml", "-h", "127.0.0.1",
                             "-p", str(port)], cwd=REPO, env=_env(materialised_home), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        # Raises with the exit code or the timeout, and the log's tail.
        wait_until_healthy(f"{base}/server_info", 240, proc, log_path=materialised_home / "webserver.log",
                           interval_s=1.0)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def page(webserver, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium_profile")
    with sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(str(profile), executable_path=_chromium(), headless=True,
                                                        args=CHROMIUM_FLAGS, viewport={"width": 1600, "height": 1000})
        page = browser.new_page()
        page.set_default_timeout(60_000)
        yield page
        browser.close()


def _artifacts() -> Path:
    path = Path(os.environ.get("DISTIL_TEST_ARTIFACTS", REPO / "test-artifacts" / "ui"))
    path.mkdir(parents=True, exist_ok=True)
    return path


DOCS_IMAGES = REPO / "docs" / "images"
DOCS_IMAGE_WIDTH = 1000  # px: readable in a README, a few tens of KiB


def _docs_screenshot(source: Path, name: str) -> None:
    """Copy a screenshot into docs/images/, downscaled and palette-compressed, when asked to."""
    if os.environ.get("DISTIL_UPDATE_DOCS_SCREENSHOTS") != "1":
        return
    from PIL import Image

    DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
    with Image.open(source) as img:
        img = img.convert("RGB")
        if img.width > DOCS_IMAGE_WIDTH:
            img = img.resize((DOCS_IMAGE_WIDTH, round(img.height * DOCS_IMAGE_WIDTH / img.width)), Image.LANCZOS)
        img.quantize(colors=64).save(DOCS_IMAGES / name, optimize=True)


def _open(page, url: str) -> None:
    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_load_state("networkidle")
    _dismiss_dialogs(page)


def _dismiss_dialogs(page) -> None:
    """Dagster's first-visit community dialog (and similar nags) on a fresh browser profile."""
    for _ in range(3):
        dialog = page.locator("[role=dialog]")
        if not dialog.count() or not dialog.first.is_visible():
            return
        for label in ("Dismiss", "No thanks", "Skip", "Close", "Not now", "Maybe later", "Got it"):
            button = dialog.first.get_by_role("button", name=label)
            if button.count():
                button.first.click()
                break
        else:
            page.keyboard.press("Escape")
        page.wait_for_timeout(500)


def test_asset_group_shows_the_tasks_lineage(page, webserver):
    group = f"{webserver}/locations/__repository__@distil_platform/asset-groups/{TASK}"
    _open(page, group)
    # The lineage graph draws each asset as a node (long names are shortened inside the node).
    for name in (TASK, f"{TASK}_student", f"{TASK}_routing"):
        page.get_by_text(name, exact=True).first.wait_for(state="visible")
    page.screenshot(path=str(_artifacts() / "asset_group_lineage.png"))
    _docs_screenshot(_artifacts() / "asset_group_lineage.png", "ui-lineage.png")
    _open(page, f"{group}/list")  # the same group as a list: every stage, full names
    for stage in STAGES:
        page.get_by_text(f"{TASK}{stage}", exact=True).first.wait_for(state="visible")
    page.screenshot(path=str(_artifacts() / "asset_group_list.png"), full_page=True)


@pytest.mark.parametrize("asset, expected", [
    (f"{TASK}_student_eval", ["score", "ci_low", "parse_failures"]),
    (f"{TASK}_cost_table", ["cost_table", "cost_rows", "snapshot_hash"]),
    (f"{TASK}_student", ["loss_curve", "trainable_params"]),
    ("benchmark_report", ["headline", "report", "tasks_with_cost_tables"]),
])
def test_asset_page_renders_key_metadata(page, webserver, asset, expected):
    _open(page, f"{webserver}/assets/{asset}")
    for text in expected:
        page.get_by_text(text, exact=True).first.wait_for(state="visible")
    page.screenshot(path=str(_artifacts() / f"{asset}.png"), full_page=True)
    if asset.endswith("_student"):
        # The loss curve is an inline PNG in markdown metadata, opened from its row: it must be drawn.
        row = page.locator("tr", has_text="loss_curve").first
        row.scroll_into_view_if_needed()
        row.get_by_text("Show Markdown").first.click()
        img = page.locator("img[src^='data:image/png']").first
        img.wait_for(state="visible")
        assert img.evaluate("el => el.naturalWidth") > 100
        page.screenshot(path=str(_artifacts() / "loss_curve.png"))
    if asset == "benchmark_report":
        # The report is markdown metadata: its table must render as a table, not as text.
        row = page.locator("tr", has_text="report").last
        row.scroll_into_view_if_needed()
        row.get_by_text("Show Markdown").first.click()
        table = page.locator("[role=dialog] table").first
        table.wait_for(state="visible")
        assert table.locator("tr").count() >= 2  # a header and at least one task
        table.evaluate("el => el.scrollIntoView({block: 'start'})")  # the headline table at the top
        page.locator("[role=dialog]").first.screenshot(path=str(_artifacts() / "report_table.png"))
        _docs_screenshot(_artifacts() / "report_table.png", "report-table.png")
