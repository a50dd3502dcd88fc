"""The report in a real browser (headless Chromium through Selenium): no console errors, a
marker per elite, an elite's detail and lineage after a click on it, the live page following
a run as it writes. Screenshots go to build/test-output/. Without Chromium these skip saying
so; with CYCLEQD_REQUIRE_BROWSER=1 (CI) they fail instead."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from cycleqd.analysis.report.page import write_report
from cycleqd.analysis.rundata import load_run
from tests.analysis.test_report import copy_run
from tests.browser import chromium, missing
from tests.runs import REPO

SHOTS = REPO / "build" / "test-output"


@pytest.fixture(scope="module")
def browser():
    why = missing()
    if why:
        if os.environ.get("CYCLEQD_REQUIRE_BROWSER") == "1":
            pytest.fail(f"CYCLEQD_REQUIRE_BROWSER=1 but {why}")
        pytest.skip(why)
    driver = chromium()
    yield driver
    driver.quit()


def errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def wait(driver, condition, timeout: float = 30.0):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition)


def test_the_page_shows_each_elite_and_its_lineage_after_a_click(browser, lively_genome_run: Path, tmp_path: Path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    page = write_report(lively_genome_run, tmp_path / "report.html")
    browser.get(page.as_uri())
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#front .main-svg"))
    run = load_run(lively_genome_run)
    for task, archive in run.archives.items():
        points = browser.find_elements(By.CSS_SELECTOR, f"#archive-{task} .scatterlayer .point")
        assert len(points) == len(archive), task
    points = browser.find_elements(By.CSS_SELECTOR, "#archive-addition .scatterlayer .point")
    ActionChains(browser).move_to_element(points[0]).pause(0.3).click().perform()
    title = wait(browser, lambda d: d.find_elements(By.ID, "detail-title"))[0].text
    shown = int(title.split()[1].rstrip(":"))
    assert shown in set(run.elites["id"])
    # the lineage drawn is the clicked elite's, and it reaches an expert
    wait(browser, lambda d: d.execute_script("return (document.getElementById('lineage').data || []).length") == 3)
    nodes = browser.execute_script(
        "const t = document.getElementById('lineage').data[2]; return [t.customdata, t.marker.symbol]"
    )
    assert shown in nodes[0] and "star" in nodes[1]
    assert browser.find_element(By.ID, "elite-picker").get_attribute("value") == str(shown)
    SHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SHOTS / "report.png"))
    assert errors(browser) == []


def test_the_live_page_follows_the_run(browser, lively_genome_run: Path, tmp_path: Path):
    from selenium.webdriver.common.by import By

    from cycleqd.analysis.report.live import make_server

    run = copy_run(lively_genome_run, tmp_path / "run")
    metrics = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run / "metrics.jsonl").write_text("".join(metrics[:-3]))
    (run / "summary.json").unlink()  # the run has not finished yet
    server = make_server(run, port=0, every_ms=300)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        browser.get(f"http://127.0.0.1:{server.server_address[1]}/")
        # read in one script call: the page may be reloading between two driver calls
        shown = "const g = document.getElementById('generations'); return g ? g.textContent : null"
        assert browser.execute_script(shown) == str(len(metrics) - 3)
        time.sleep(0.5)
        with (run / "metrics.jsonl").open("a") as f:  # the run writes a generation
            f.write(metrics[-3])
        wait(browser, lambda d: d.execute_script(shown) == str(len(metrics) - 2))
        assert browser.find_elements(By.CSS_SELECTOR, "#curves .main-svg")
        SHOTS.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(SHOTS / "report-live.png"))
        assert errors(browser) == []
    finally:
        server.shutdown()
        server.server_close()
