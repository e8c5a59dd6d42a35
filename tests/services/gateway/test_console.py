"""The web console in a real browser (Debian's chromium through Selenium) against the session's
gateway and real services: sign in, the overview, a streamed playground answer from the real
model, loading and unloading a model, a job's live events, a training run's loss chart, the
analytics charts and a phone-sized screen. Screenshots go to $LLMMESH_SCREENSHOTS
(.data/screenshots by default).

The gateway serves on this test's event loop, so every browser step runs in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import Select, WebDriverWait

from services.common.logs import RECENT
from tests.conftest import GEMMA, admin_jwt

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
SCREENSHOTS = Path(os.environ.get("LLMMESH_SCREENSHOTS", ".data/screenshots"))


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    if not (CHROMIUM and CHROMEDRIVER):
        message = "chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)"
        if os.environ.get("LLMMESH_REQUIRE_BROWSER"):  # .ci/run installs them: there it must run
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


async def step(function: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(function, *args)


def wait_for(driver: WebDriver, condition: Callable[[WebDriver], Any], timeout: float = 60) -> Any:
    """What `condition` returns once truthy; a re-rendered element is looked up again."""
    return WebDriverWait(driver, timeout, ignored_exceptions=(StaleElementReferenceException,)).until(condition)


def text_of(css: str) -> Callable[[WebDriver], str]:
    def read(driver: WebDriver) -> str:
        found = driver.find_elements(By.CSS_SELECTOR, css)
        return found[0].text if found else ""

    return read


def shot(driver: WebDriver, name: str) -> None:
    driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))


def sign_in(driver: WebDriver, url: str, credential: str) -> None:
    driver.get(f"{url}/console/")
    driver.execute_script("sessionStorage.clear()")
    driver.refresh()
    field = wait_for(driver, lambda d: d.find_element(By.ID, "token"))
    field.send_keys(credential)
    driver.find_element(By.ID, "sign-in").click()


def click(driver: WebDriver, element: Any) -> None:
    """Click `element` once scrolled to the middle of the screen: the sticky header covers the top."""
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    element.click()


def go(driver: WebDriver, view: str) -> None:
    """Open a view from the nav, once the shell has rendered it (a view may be re-rendering)."""
    wait_for(driver, lambda d: d.find_element(By.ID, f"nav-{view}"), 30).click()


async def test_the_page_has_no_cookie_and_a_strict_policy(http: httpx.AsyncClient) -> None:
    page = await http.get("/console/")
    assert page.status_code == 200 and "app.js" in page.text
    assert "set-cookie" not in page.headers
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert (await http.get("/console")).headers["location"] == "/console/"
    for escape in ("/console/..%2Fapp.py", "/console/%2e%2e/routers/console.py", "/console/missing.js"):
        assert (await http.get(escape)).status_code == 404, escape
    script = await http.get("/console/vendor/preact.mjs")
    assert script.headers["content-type"].startswith("text/javascript")


async def test_a_wrong_key_is_refused_at_sign_in(browser: WebDriver, gateway_url: str) -> None:
    # The session gateway lets anonymous callers in on loopback, but a key it does not know is refused.
    await step(sign_in, browser, gateway_url, "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.forged")
    error = await step(wait_for, browser, text_of("[role=alert]"))
    assert "JWT" in error or "token" in error.lower(), error


async def test_sign_in_refuses_what_is_no_credential(browser: WebDriver, gateway_url: str) -> None:
    # A local gateway lets any string in as anonymous; the console says it is no key instead.
    await step(sign_in, browser, gateway_url, "hello")
    error = await step(wait_for, browser, text_of("[role=alert]"))
    assert "neither an API key" in error, error


@pytest.mark.parametrize("width", [390, 1400])
async def test_the_sign_in_label_is_one_line(browser: WebDriver, gateway_url: str, width: int) -> None:
    def lines() -> int:
        browser.set_window_size(width, 844 if width < 600 else 900)
        try:
            browser.get(f"{gateway_url}/console/")
            browser.execute_script("sessionStorage.clear()")
            browser.refresh()
            wait_for(browser, lambda d: d.find_element(By.ID, "token-label"))
            # One client rect per line box the label's text is laid out in.
            count = "const r = document.createRange(); r.selectNodeContents(document.getElementById('token-label'));"
            return browser.execute_script(count + " return r.getClientRects().length;")
        finally:
            browser.set_window_size(1280, 900)

    assert await step(lines) == 1


async def test_an_expired_jwt_returns_to_sign_in_saying_so(browser: WebDriver, gateway_url: str) -> None:
    await step(sign_in, browser, gateway_url, admin_jwt(ttl_seconds=2))
    await step(wait_for, browser, text_of("#mesh-status"))
    await asyncio.sleep(3)

    def next_view() -> str:
        # The next call with the expired JWT signs out: the overview's own polling, or the view opened now.
        with contextlib.suppress(StaleElementReferenceException):
            for link in browser.find_elements(By.ID, "nav-models"):
                link.click()
        return wait_for(browser, lambda d: "Signed out" in text_of("[role=alert]")(d) and text_of("[role=alert]")(d))

    message = await step(next_view)
    assert "expired" in message.lower(), message
    assert await step(lambda: browser.find_elements(By.ID, "sign-in"))


async def test_overview_after_signing_in(browser: WebDriver, gateway_url: str) -> None:
    await step(sign_in, browser, gateway_url, admin_jwt())
    status = await step(wait_for, browser, text_of("#mesh-status"))
    assert "ok" in status or "degraded" in status, status
    services = await step(wait_for, browser, text_of("#services"))
    assert "inference" in services and "SERVING" in services
    models = await step(
        wait_for, browser, lambda d: GEMMA in text_of("#overview-models")(d) and text_of("#overview-models")(d)
    )
    assert "gguf" in models and "undefined" not in models
    assert "→ " in models  # slots, tiers and aliases name the model they reach
    assert "embeddings service" in models
    queue = await step(wait_for, browser, lambda d: GEMMA in text_of("#queue")(d) and text_of("#queue")(d))
    assert "loaded" in queue  # the engines' running and waiting work, per model
    await step(shot, browser, "overview")


async def test_the_playground_streams_an_answer_from_the_real_model(browser: WebDriver) -> None:
    def ask() -> str:
        go(browser, "playground")
        model = wait_for(browser, lambda d: d.find_element(By.ID, "playground-model"))
        wait_for(browser, lambda d: len(Select(model).options) > 1)
        Select(model).select_by_visible_text(GEMMA)
        limit = browser.find_element(By.CSS_SELECTOR, "input[type=number][max='32768']")
        limit.send_keys(Keys.CONTROL, "a")
        limit.send_keys("4")
        browser.find_element(By.ID, "prompt").send_keys("Write one sentence about the sea.")
        browser.find_element(By.ID, "send").click()
        return wait_for(
            browser, lambda d: "tok/s" in text_of(".message.assistant")(d) and text_of(".message.assistant")(d)
        )

    answer = await step(ask)
    text, meta = answer.rsplit("\n", 1)
    assert text.strip(), answer
    assert meta.startswith("TTFT ") and " ms " in meta, meta  # the first token's time was measured
    assert meta.endswith("4 tokens · cut at max tokens"), meta
    await step(shot, browser, "playground")


async def test_a_model_loads_and_unloads_from_the_models_view(browser: WebDriver, admin: httpx.AsyncClient) -> None:
    await admin.post("/admin/models/mock/unload")

    def state() -> Callable[[WebDriver], str]:
        return text_of('[data-model-state="mock"]')

    def toggle() -> tuple[str, str]:
        go(browser, "models")
        wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, '[data-load="mock"]'))[0].click()
        loaded = wait_for(browser, lambda d: state()(d) == "loaded" and state()(d))
        shot(browser, "models")
        wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, '[data-unload="mock"]'))[0].click()
        unloaded = wait_for(browser, lambda d: state()(d) not in ("", "loaded") and state()(d))
        return loaded, unloaded

    loaded, unloaded = await step(toggle)
    assert (loaded, unloaded) == ("loaded", "unloaded")
    assert (await admin.get("/v1/models/mock")).json()["state"] == "unloaded"


async def test_a_jobs_live_events(browser: WebDriver, admin: httpx.AsyncClient) -> None:
    body = {"job_type": "chat", "request": {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}}
    submitted = await admin.post("/internal/queue/enqueue", json=body)
    assert submitted.status_code == 202, submitted.text
    job = submitted.json()
    quick = {"job_type": "chat", "request": {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}}
    for _ in range(25):  # newer jobs: the table runs past the screen, and the events card below it
        assert (await admin.post("/internal/queue/enqueue", json=quick)).status_code == 202

    def watch() -> tuple[str, str]:
        go(browser, "jobs")
        wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, f'[data-job="{job["id"]}"]'))[0].click()
        state = wait_for(browser, lambda d: "succeeded" in text_of("#job-state")(d) and text_of("#job-state")(d))
        where = "const r = document.getElementById('job-events').getBoundingClientRect();"
        where += " return [r.top, window.innerHeight, window.scrollY, document.body.scrollHeight];"
        top, height, scrolled, page = browser.execute_script(where)
        assert 0 <= top < height, f"the events are drawn off screen: {top=} {height=} {scrolled=} {page=}"
        shot(browser, "jobs")
        return state, text_of("#job-events")(browser)

    state, events = await step(watch)
    assert "succeeded" in state and "succeeded" in events

    def table() -> tuple[str, str, str]:
        created = wait_for(browser, text_of(f'[data-job="{job["id"]}"]'))
        link = browser.find_element(By.CSS_SELECTOR, f'[data-job="{job["id"]}"]')
        row = link.find_element(By.XPATH, "./ancestor::tr")
        took = text_of(f'[data-duration="{job["id"]}"]')(browser)
        return created, row.text, took

    _, row, took = await step(table)
    assert took.endswith(" s"), took  # how long it ran
    assert "chat background" in row, row  # its type and the model it ran on
    assert str(time.localtime().tm_year) in row, row  # a date, not only a time of day


async def test_cancelling_a_job_asks_first(browser: WebDriver, admin: httpx.AsyncClient) -> None:
    # A key allowed one request a minute: its second job waits for the next minute, cancellable.
    made = await admin.post("/admin/keys", json={"name": "one-a-minute", "scopes": ["chat", "jobs"], "rpm_limit": 1})
    key = {"Authorization": f"Bearer {made.json()['key']}"}
    body = {"job_type": "chat", "request": {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}}
    first = await admin.post("/internal/queue/enqueue", json=body, headers=key)
    waiting = (await admin.post("/internal/queue/enqueue", json=body, headers=key)).json()["id"]
    assert first.status_code == 202

    def cancel_button(d: WebDriver) -> Any:
        link = d.find_element(By.CSS_SELECTOR, f'[data-job="{waiting}"]')
        return link.find_element(By.XPATH, "./ancestor::tr").find_element(By.CSS_SELECTOR, "button.danger")

    def answer(accept: bool) -> None:
        go(browser, "jobs")
        click(browser, wait_for(browser, cancel_button))
        alert = browser.switch_to.alert
        assert waiting in alert.text
        alert.accept() if accept else alert.dismiss()

    async def state() -> str:
        return (await admin.get(f"/v1/jobs/{waiting}")).json()["state"]

    await step(answer, False)
    await asyncio.sleep(1)
    assert await state() in ("queued", "running")  # dismissed: nothing happened
    await step(answer, True)
    async with asyncio.timeout(30):
        while await state() != "cancelled":
            await asyncio.sleep(0.2)


async def test_jobs_page_and_filter_batches(browser: WebDriver, admin: httpx.AsyncClient) -> None:
    quick = {"job_type": "chat", "request": {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}}
    ids = []
    for _ in range(55):  # past one page of 50
        ids.append((await admin.post("/internal/queue/enqueue", json=quick)).json()["id"])
    assert (await admin.get("/v1/jobs", params={"job_type": "batch"})).status_code == 200

    def page_through() -> tuple[list[str], list[str], list[str]]:
        go(browser, "jobs")
        wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, f'[data-job="{ids[-1]}"]'))
        first = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#jobs [data-job]")]
        wait_for(browser, lambda d: d.find_element(By.ID, "jobs-older").is_enabled())
        browser.find_element(By.ID, "jobs-older").click()
        wait_for(browser, lambda d: not d.find_elements(By.CSS_SELECTOR, f'[data-job="{ids[-1]}"]'))
        second = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#jobs [data-job]")]
        browser.find_element(By.ID, "jobs-newer").click()
        Select(browser.find_element(By.CSS_SELECTOR, "select[aria-label=type]")).select_by_visible_text("batch")
        wait_for(browser, lambda d: not d.find_elements(By.CSS_SELECTOR, f'[data-job="{ids[-1]}"]'))
        batches = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#jobs [data-job]")]
        Select(browser.find_element(By.CSS_SELECTOR, "select[aria-label=type]")).select_by_visible_text("any type")
        return first, second, batches

    first, second, batches = await step(page_through)
    assert len(first) == 50 and first[0] == ids[-1]
    assert second and not set(first) & set(second)
    assert not set(batches) & set(ids)


async def test_a_training_run_draws_its_loss_and_stores_an_adapter(browser: WebDriver) -> None:
    def train() -> str:
        go(browser, "training")
        steps = wait_for(browser, lambda d: d.find_element(By.CSS_SELECTOR, "input[type=number]"))
        # Typed over, as a person would: clear() fires no input event, so a re-render (the models
        # list arriving) would put the old 20 back and "3" would make it 203 steps.
        steps.send_keys(Keys.CONTROL, "a")
        steps.send_keys("3")
        wait_for(browser, lambda d: steps.get_attribute("value") == "3")
        browser.find_element(By.ID, "adapter-name").send_keys("support tone v1")
        browser.find_element(By.CSS_SELECTOR, "form button.primary").click()
        state = wait_for(
            browser, lambda d: "succeeded" in text_of("#training-state")(d) and text_of("#training-state")(d), 240
        )
        wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#loss-chart canvas"))
        named = wait_for(browser, lambda d: "support tone v1" in text_of("#adapters")(d))
        shot(browser, "training")
        return state, named

    state, named = await step(train)
    assert "step 3 / 3" in state and "loss" in state, state
    assert named  # the adapter shows by its name, not only its hash


async def test_analytics_charts_what_was_served(browser: WebDriver, admin: httpx.AsyncClient) -> None:
    history = (await admin.get("/metrics/history", params={"seconds": 600})).json()
    assert sum(point["requests_per_minute"] for point in history["points"]) > 0  # the playground's chat
    assert any(point["ttft_p50_ms"] for point in history["points"])
    assert sum(point["completion_tokens"] for point in history["points"]) > 0

    def look() -> None:
        go(browser, "analytics")
        wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#chart-requests canvas"))
        shot(browser, "analytics")

    await step(look)


async def test_settings_create_an_api_key(browser: WebDriver, admin: httpx.AsyncClient) -> None:
    def create() -> str:
        go(browser, "settings")
        name = wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "form input[required]"))[0]
        name.send_keys("from-the-console")
        name.submit()
        key = wait_for(browser, text_of("#new-key"))
        shot(browser, "settings")
        return key

    key = await step(create)
    assert key.startswith("llmm_")
    names = [k["name"] for k in (await admin.get("/admin/keys")).json()["data"]]
    assert "from-the-console" in names

    def columns_and_revoke() -> tuple[str, str, bool]:
        row = wait_for(browser, lambda d: d.find_element(By.CSS_SELECTOR, '[data-revoke="from-the-console"]'))
        header = browser.find_element(By.CSS_SELECTOR, "#keys thead").text
        text = row.find_element(By.XPATH, "./ancestor::tr").text
        click(browser, row)
        browser.switch_to.alert.accept()
        # Revoked keys leave the list, behind a "show revoked" box.
        wait_for(browser, lambda d: not d.find_elements(By.CSS_SELECTOR, '[data-revoke="from-the-console"]'))
        gone = "from-the-console" not in browser.find_element(By.ID, "keys").text
        click(browser, browser.find_element(By.ID, "show-revoked"))
        wait_for(browser, lambda d: "from-the-console" in d.find_element(By.ID, "keys").text)
        click(browser, browser.find_element(By.ID, "show-revoked"))
        return header, text, gone

    header, row, gone = await step(columns_and_revoke)
    for column in ("created", "last used", "limits"):
        assert column in header.lower(), header
    assert "never" in row and str(time.localtime().tm_year) in row, row
    assert gone


async def test_settings_show_what_is_in_force_and_make_live_applies_at_once(
    browser: WebDriver, admin: httpx.AsyncClient
) -> None:
    def in_force() -> str:
        go(browser, "settings")
        return wait_for(browser, text_of('[data-effective="model.live.name"]'))

    def make_mock_live() -> str:
        go(browser, "models")
        wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, '[data-make-live="mock"]'))[0].click()
        live = text_of('[data-model-state="live"]')
        return wait_for(browser, lambda d: "mock" in live(d) and live(d))

    # Nothing is stored for the live slot, yet it serves the registry's default.
    assert await step(in_force) == GEMMA
    try:
        assert await step(make_mock_live) == "→ mock"  # applied, not only stored
        listed = {m["id"]: m for m in (await admin.get("/v1/models")).json()["data"]}
        assert listed["live"]["resolves_to"] == "mock"
    finally:
        await admin.put("/settings/model.live.name", json={"value": ""})
        await admin.post("/admin/models/reload")


async def test_the_logs_view_follows_a_service_and_overview_shows_each_processs_memory(browser: WebDriver) -> None:
    # Every service process feeds RECENT from its logging setup; here the services share the
    # test's process, so the test attaches it as that setup would.
    root = logging.getLogger()
    root.addHandler(RECENT)
    marker = f"console-log-marker-{time.time_ns()}"
    try:
        logging.getLogger("tests.console").warning("before the view opened: %s", marker)

        def follow() -> tuple[str, str]:
            go(browser, "logs")
            Select(wait_for(browser, lambda d: d.find_element(By.ID, "log-service"))).select_by_visible_text(
                "scheduler"
            )
            old = wait_for(browser, lambda d: marker in text_of("#log-lines")(d) and text_of("#log-lines")(d))
            return old, browser.find_element(By.CSS_SELECTOR, "#log-lines .level-warning").text

        old, warning = await step(follow)
        assert "WARNING tests.console before the view opened" in warning, warning
        logging.getLogger("tests.console").error("live: %s", marker)
        live = await step(wait_for, browser, lambda d: f"live: {marker}" in text_of("#log-lines")(d))
        assert live

        def memory() -> str:
            go(browser, "overview")
            wait_for(browser, lambda d: d.find_element(By.ID, "nav-logs"))
            wait_for(browser, lambda d: text_of('[data-cpu="inference"]')(d))  # two readings make a rate
            shot(browser, "overview")
            return text_of('[data-memory="inference"]')(browser)

        assert (await step(memory)).endswith(" MB")
    finally:
        root.removeHandler(RECENT)


VIEWS = ("overview", "models", "playground", "jobs", "training", "analytics", "logs", "settings")


@pytest.mark.parametrize("width", [390, 1400])
async def test_every_view_fits_the_screen(browser: WebDriver, width: int) -> None:
    """A phone (390 px) and a desktop (1400 px): no view scrolls sideways (tables scroll inside
    their cards), and no button pokes out of its card. Screenshots of each view at each width."""

    def look() -> dict[str, list[int]]:
        browser.set_window_size(width, 844 if width < 600 else 900)
        # On a phone a wide table scrolls inside its card (.scroll); on a desktop nothing should.
        buttons = "section.card button" + (":not(.scroll button)" if width < 600 else "")
        overflow = f"""
            const outside = [...document.querySelectorAll("{buttons}")].filter((button) => {{
              const card = button.closest("section.card").getBoundingClientRect();
              const box = button.getBoundingClientRect();
              return box.right > card.right + 1 || box.left < card.left - 1;
            }});
            return [document.documentElement.scrollWidth, window.innerWidth, outside.length];"""
        found = {}
        try:
            for view in VIEWS:
                go(browser, view)
                wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "section.card"))
                found[view] = browser.execute_script(overflow)
                shot(browser, f"{view}-{width}")
        finally:
            browser.set_window_size(1280, 900)
        return found

    for view, (page_width, screen_width, loose_buttons) in (await step(look)).items():
        assert page_width <= screen_width, f"{view} scrolls sideways at {width} px"
        assert not loose_buttons, f"{view}: {loose_buttons} buttons outside their card at {width} px"


async def test_a_sign_in_link_asks_before_replacing_the_tabs_credential(browser: WebDriver, gateway_url: str) -> None:
    """A crafted /console/#token=... link must not silently sign a signed-in tab in as someone else."""

    def follow(link_token: str, accept: bool) -> str:
        browser.get("about:blank")  # a full load of the console, as following a link does
        browser.get(f"{gateway_url}/console/#token={link_token}")
        alert = WebDriverWait(browser, 10).until(expected_conditions.alert_is_present())
        alert.accept() if accept else alert.dismiss()
        wait_for(browser, text_of("#mesh-status"))
        return browser.execute_script("return sessionStorage.getItem('llmmesh.token')")

    own = admin_jwt()
    await step(sign_in, browser, gateway_url, own)
    assert await step(follow, "someone-elses-credential", False) == own
    assert await step(follow, "someone-elses-credential", True) == "someone-elses-credential"
    await step(sign_in, browser, gateway_url, own)


async def test_a_sign_in_link_opened_in_a_tab_already_on_the_console(browser: WebDriver, gateway_url: str) -> None:
    """Only the fragment changes (no page load): the link is still honoured, after asking, and
    its token leaves the address bar."""
    own, other = admin_jwt(), admin_jwt(ttl_seconds=1800)

    def follow_in_place() -> list[str]:
        browser.execute_script(f"location.hash = '#token={other}'")
        WebDriverWait(browser, 10).until(expected_conditions.alert_is_present()).accept()
        wait_for(browser, text_of("#mesh-status"))
        return browser.execute_script("return [sessionStorage.getItem('llmmesh.token'), location.href]")

    await step(sign_in, browser, gateway_url, own)
    await step(wait_for, browser, text_of("#mesh-status"))
    held, address = await step(follow_in_place)
    assert held == other and "token=" not in address
    await step(sign_in, browser, gateway_url, own)
