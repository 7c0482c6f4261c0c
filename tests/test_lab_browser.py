"""A real browser on ``ptdeploy lab``: Debian's Chromium, driven by Selenium.

JupyterLab is started as ``ptdeploy lab`` starts it (127.0.0.1, token, the project's
kernel), on a copy of the templates (JupyterLab autosaves: the repository's notebooks
must keep no outputs), with the widgets seeded from ``parameters/<nb>/local.yaml`` and
``model_source=tiny-llama`` so the whole flow runs in seconds. The browser renders the
parameters form, a person's edits are typed into it, and what the notebook then does
is read back from the page. Screenshots go under ``out/lab/`` for a person to look at.

Chromium and chromedriver come from ``scripts/setup.sh`` (apt-get, as root); Selenium
drives them by path (no browser download at run time).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SHOTS = REPO / "out" / "lab"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
RUN_TIMEOUT_S = 150
# Phase durations, written to out/lab/timings.txt (reported, never asserted: speed is
# a benchmark's business).
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    from ptdeploy.templates import lab as lab_module

    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.fail(
            "Chromium and chromedriver are missing: run `sudo bash scripts/setup.sh` "
            "(it installs Debian's chromium and chromium-driver)."
        )
    root = tmp_path_factory.mktemp("lab")
    notebooks = root / "notebooks"
    shutil.copytree(REPO / "notebooks", notebooks)
    settings = root / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    # no "get notified about Jupyter news?" toast over the screenshots
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    env = {
        **os.environ,
        "JUPYTERLAB_SETTINGS_DIR": str(root / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(root / "workspaces"),
    }
    started = time.perf_counter()
    server = lab_module.start_lab(
        notebooks=notebooks,
        open_browser=False,
        parameters_target="local",
        overrides={"model_source": "tiny-llama"},
        # window.jupyterapp: the page's own command registry ("Run All Cells" is a command)
        extra_args=["--LabApp.expose_app_in_browser=True"],
        env=env,
        log_file=root / "lab.log",
    )
    TIMINGS["lab server answering (s)"] = time.perf_counter() - started
    yield server
    server.stop()
    assert not server.alive()
    SHOTS.mkdir(parents=True, exist_ok=True)
    (SHOTS / "timings.txt").write_text("".join(f"{k}: {v:.1f}\n" for k, v in TIMINGS.items()))


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_argument("--window-size=1500,1100")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(30)
    SHOTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


# ------------------------------------------------------------------ page helpers


def _wait(driver, predicate, timeout: float, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.25).until(
        lambda d: predicate(d), message=f"timed out after {timeout:.0f}s waiting for {what}"
    )


_KERNEL_STATE = """
const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
if (!w || !w.sessionContext || !w.sessionContext.session || !w.sessionContext.session.kernel)
  return null;
const cells = w.content.widgets.filter(c => c.model.type === 'code');
return {status: w.sessionContext.session.kernel.status,
        pending: cells.filter(c => c.promptNode && c.promptNode.textContent.includes('*')).length,
        unrun: cells.filter(c => c.model.executionCount === null).length};
"""


def _kernel_idle(driver) -> bool:
    state = driver.execute_script(_KERNEL_STATE)
    return bool(state) and state["status"] == "idle" and state["pending"] == 0


def open_notebook(driver, lab, name: str) -> None:
    started = time.perf_counter()
    driver.get(lab.notebook_url(name) + "&reset")  # a fresh layout: this notebook only
    _wait(driver, _kernel_idle, 90, f"{name} open with an idle kernel")
    TIMINGS[f"{name}: page usable, kernel idle (s)"] = time.perf_counter() - started


def run_to_parameters_form(driver) -> None:
    """Run the cells down to the one that shows the form (the reader's first steps)."""
    started = time.perf_counter()
    driver.execute_script(
        """
        const nb = window.jupyterapp.shell.currentWidget.content;
        const idx = nb.widgets.findIndex(c => c.model.sharedModel.getSource()
                                              .includes('globals()'));
        nb.activeCellIndex = idx + 1;
        window.jupyterapp.commands.execute('notebook:run-all-above');
        """
    )
    form = _wait(
        driver,
        lambda d: current(d).find_elements("css selector", ".ptdeploy-parameters"),
        90,
        "the parameters form",
    )[0]
    _wait(driver, _kernel_idle, 60, "the parameters cell to finish")
    driver.execute_script("arguments[0].scrollIntoView({block: 'start'});", form)
    TIMINGS["cells down to the parameters form (s)"] = time.perf_counter() - started


def current(driver):
    """The notebook panel in front (other tabs keep their own forms)."""
    return driver.execute_script("return window.jupyterapp.shell.currentWidget.node;")


def row(driver, label: str):
    """The form row (control + message) whose widget label is ``label``."""
    return current(driver).find_element(
        "xpath",
        ".//div[contains(@class,'ptdeploy-parameters')]//div[contains(@class,'widget-hbox')]"
        f"[.//label[normalize-space()='{label}']]",
    )


def type_into(driver, label: str, text: str) -> None:
    from selenium.webdriver.common.keys import Keys

    field = row(driver, label).find_element("css selector", "input")
    field.click()
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(text)
    field.send_keys(Keys.TAB)  # number and text widgets commit on blur


def scroll_to_cell(driver, source_fragment: str) -> None:
    driver.execute_script(
        """
        const nb = window.jupyterapp.shell.currentWidget.content;
        const cell = nb.widgets.find(c => c.model.sharedModel.getSource().includes(arguments[0]));
        cell.node.scrollIntoView({block: 'start'});
        """,
        source_fragment,
    )
    time.sleep(0.5)  # the windowed notebook renders the cells now in view


def cell_outputs(driver) -> str:
    return driver.execute_script(
        "return Array.from(window.jupyterapp.shell.currentWidget.node"
        ".querySelectorAll('.jp-OutputArea-output'))"
        ".map(e => e.innerText).join('\\n---\\n');"
    )


# ------------------------------------------------------------------ the tests


def test_widgets_render_from_the_spec_and_an_edit_drives_the_run(lab, browser):
    open_notebook(browser, lab, "llama_completions.ipynb")
    run_to_parameters_form(browser)

    labels = [
        e.text for e in current(browser).find_elements("css selector", ".ptdeploy-parameters label")
    ]
    for expected in ("Model source", "Smoke-test max_tokens", "Target", "Max throughput (chunks)"):
        assert expected in labels
    # seeded from parameters/llama_completions/local.yaml and -p model_source tiny-llama
    source = row(browser, "Model source").find_element("css selector", "input")
    assert source.get_attribute("value") == "tiny-llama"
    assert row(browser, "Target").find_element("css selector", "select").tag_name == "select"
    assert row(browser, "Smoke-test max_tokens").find_element(
        "css selector", "input"
    ).get_attribute("type") in ("number", "text")

    type_into(browser, "Smoke-test max_tokens", "3")
    browser.save_screenshot(str(SHOTS / "1-form-max_tokens-3.png"))

    started = time.perf_counter()
    browser.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells');")
    _wait(
        browser,
        lambda d: _kernel_idle(d) and d.execute_script(_KERNEL_STATE)["unrun"] == 0,
        RUN_TIMEOUT_S,
        "Run All to finish",
    )
    TIMINGS["llama_completions: Run All, tiny-llama (s)"] = time.perf_counter() - started
    text = cell_outputs(browser)
    scroll_to_cell(browser, "flow.deploy_step(")  # the endpoint wait's progress bar
    browser.save_screenshot(str(SHOTS / "2-run-all-progress.png"))
    scroll_to_cell(browser, "completions.smoke_test_step(")
    browser.save_screenshot(str(SHOTS / "3-run-all-output-max_tokens-3.png"))
    assert "Traceback" not in text and "Error" not in text, text[-3000:]
    # the resolved parameters the notebook printed, and what the endpoint answered
    assert "max_tokens" in text and "3" in text
    assert "completion_tokens=3" in text, text[-3000:]


def test_an_invalid_value_is_shown_next_to_its_widget_and_stops_the_run(lab, browser):
    from ptdeploy.errors import ParameterError
    from ptdeploy.templates.runner import resolve_parameters

    with pytest.raises(ParameterError) as cli_error:  # what `ptdeploy run -p max_tokens 0` says
        resolve_parameters(
            REPO / "notebooks" / "deepseek_r1_distill_llama.ipynb", None, {"max_tokens": "0"}
        )

    open_notebook(browser, lab, "deepseek_r1_distill_llama.ipynb")
    run_to_parameters_form(browser)
    label = "Smoke-test max_tokens (reasoning is long)"
    assert not row(browser, label).find_elements("css selector", ".ptdeploy-param-error")

    type_into(browser, label, "0")
    message = _wait(
        browser,
        lambda d: row(d, label).find_elements("css selector", ".ptdeploy-param-error"),
        20,
        "the error next to max_tokens",
    )[0]
    assert message.text == str(cli_error.value)
    browser.save_screenshot(str(SHOTS / "4-invalid-max_tokens-0.png"))

    # the next step refuses to run with it: the value never reaches the library
    browser.execute_script(
        """
        const nb = window.jupyterapp.shell.currentWidget.content;
        const idx = nb.widgets.findIndex(c => c.model.sharedModel.getSource()
                                              .includes('globals()'));
        nb.activeCellIndex = nb.widgets.findIndex((c, i) => i > idx && c.model.type === 'code');
        window.jupyterapp.commands.execute('notebook:run-cell');
        """
    )
    _wait(browser, lambda d: "ParameterError" in cell_outputs(d), 60, "the step to refuse")
    assert "Fix the value in the parameters form above" in cell_outputs(browser)
