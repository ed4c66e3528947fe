"""NNI's web UI in a real browser (Debian's chromium + chromium-driver, driven by Selenium): a ts-engine search
of 3 trials, then `metanet ui RUN` serves NNI's record of it and the overview lists the 3 trials with the reward
each reported. A screenshot is saved beside the test's output (pytest's tmp_path, named in the failure)."""
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="chromium and chromium-driver are not installed "
                                                      "(make test installs them when run as root)")
def test_nni_web_ui_lists_the_trials_of_a_search_with_their_metrics(tmp_path):
    pytest.importorskip("selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    from metanet.runs.config import SearchConfig
    from metanet.runs.directory import RunDir
    from metanet.search.driver import run_search
    out = tmp_path / "run"
    cfg = SearchConfig.from_dict({"stages": ["zero-cost"], "proxy_resolution": 16, "trials": 3, "flops": ["300M"],
                                  "engine": "ts", "concurrency": 1, "port": _port(), "out": str(out)})
    assert run_search(cfg, progress=False, echo=lambda m: None).trials == 3
    rows = RunDir.open(out).store.trials()
    port = _port()
    ui = subprocess.Popen([str(Path(sys.executable).with_name("metanet")), "ui", str(out), "--port", str(port)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "NNI web UI of experiment" in ui.stdout.readline()
        # what the UI reads: each trial's final metric holds the reward as NNI's default, and metanet's keys
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/nni/metric-data") as answer:
            finals = [json.loads(json.loads(m["data"])) for m in json.load(answer) if m["type"] == "FINAL"]
        assert sorted(f["default"] for f in finals) == pytest.approx(sorted(r["reward"] for r in rows))
        for final in finals:
            assert {"score", "mflops", "mparams", "zero-cost.score"} <= set(final)
            assert final["zero-cost.score"] == final["score"]

        options = webdriver.ChromeOptions()
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1600,1000"):
            options.add_argument(arg)
        options.binary_location = CHROMIUM
        browser = webdriver.Chrome(service=Service(DRIVER), options=options)
        try:
            browser.get(f"http://127.0.0.1:{port}/oview")
            body = lambda: browser.find_element("tag name", "body").text  # noqa: E731
            WebDriverWait(browser, 60, 0.5).until(lambda _: body().count("SUCCEEDED") >= 3)
            browser.save_screenshot(str(tmp_path / "nni-web-ui-overview.png"))
            text = body()
            assert text.count("SUCCEEDED") == 3 and "Default metric" in text
            for row in rows:  # the UI rounds to 6 decimals
                assert f"{row['reward']:.6f}".rstrip("0") in text, (row["reward"], tmp_path)
        finally:
            browser.quit()
    finally:
        ui.terminate()
        ui.wait(10)
