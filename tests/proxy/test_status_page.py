"""The status page in a real browser (Debian's headless Chromium, driven by Selenium): signing in
with the admin key, the configured channels, a provider made to fail shown with its circuit
open, and the tokens the test spent in the usage chart. A screenshot is saved to
`test-artifacts/status-page.png`. Without Chromium (make system-deps installs it) the browser
test is skipped; the access rules are checked over plain HTTP either way."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from proxy.app import create_app
from proxy.config import parse_config
from proxy.status import COOKIE, session_ok, session_value
from tests.fakes.openai_upstream import FakeOpenAI
from tests.servers import serve_asgi

ROOT = Path(__file__).parents[2]
ARTIFACTS = ROOT / "test-artifacts"
ADMIN = "adm-status-7"
API_KEY = "sk-status"
HI = [{"role": "user", "content": "hello"}]


def config(tmp: Path, good: str, bad: str, *, admin: bool = True) -> dict[str, Any]:
    return {
        "store": {"url": f"sqlite:///{tmp}/s.db"},
        "keys": [{"key": API_KEY, "name": "web"}],
        "admin": {"keys": [ADMIN] if admin else []},
        "failover": {"attempts": 1, "circuit_failures": 1, "circuit_cooldown": 600},
        "providers": {
            "main": {"kind": "openai", "base_url": good, "api_key": "sk-up", "model": "gpt-4o-mini"},
            "flaky": {"kind": "openai", "base_url": bad, "api_key": "sk-up", "model": "gpt-4o-mini"},
            "paint": {"kind": "echo"},
        },
        "channels": [
            {"name": "support", "providers": ["main"]},
            {"name": "backup", "providers": ["flaky"]},
            {"name": "playground", "providers": ["paint"]},
        ],
    }


async def spend(url: str, bad: FakeOpenAI) -> int:
    """Two answers on `support`, one failure on `backup` (its circuit opens); the tokens spent."""
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0)
    tokens = 0
    for _ in range(2):
        r = await client.chat.completions.create(model="support", messages=HI)  # type: ignore[arg-type]
        assert r.usage is not None
        tokens += r.usage.total_tokens
    bad.fail(500)
    with pytest.raises(openai.APIStatusError):
        await client.chat.completions.create(model="backup", messages=HI)  # type: ignore[arg-type]
    return tokens


async def written(c: httpx.AsyncClient, url: str, requests: int) -> None:
    for _ in range(200):  # usage is written in batches
        got = await c.get(f"{url}/admin/usage", headers={"Authorization": f"Bearer {ADMIN}"})
        if got.json()["total"]["requests"] >= requests:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("usage was not written")


def browse(url: str, shot: Path) -> dict[str, Any]:
    """Sign in through the form and read the page, as an operator's browser does."""
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    def gone(element: Any) -> Any:
        """`staleness_of`, also for Chromium's other words for it ("Node with given id does not
        belong to the document" is a WebDriverException, not a StaleElementReferenceException)."""

        def check(_: Any) -> bool:
            try:
                element.is_enabled()
            except WebDriverException:
                return True
            return False

        return check

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,1600",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver") or "chromedriver"))
    try:
        driver.set_page_load_timeout(30)
        driver.get(f"{url}/status")
        login = {"title": driver.title, "has_form": bool(driver.find_elements(By.NAME, "key"))}

        def submit(key: str) -> None:
            driver.find_element(By.NAME, "key").send_keys(key)
            button = driver.find_element(By.CSS_SELECTOR, "form.login button")
            button.click()
            WebDriverWait(driver, 15).until(gone(button))  # the next page replaced the form

        submit("not-the-key")
        wrong = driver.find_element(By.CSS_SELECTOR, ".warn").text
        submit(ADMIN)
        channels = [
            e.get_attribute("data-channel") for e in driver.find_elements(By.CSS_SELECTOR, "#routes tr[data-channel]")
        ]
        circuits = {
            e.get_attribute("data-provider"): e.get_attribute("data-circuit")
            for e in driver.find_elements(By.CSS_SELECTOR, "#providers tr[data-provider]")
        }
        usage = driver.find_element(By.CSS_SELECTOR, "#usage .usage[data-channel='support']")
        bars = usage.find_elements(By.CSS_SELECTOR, "figure:first-of-type svg rect")  # per hour, 24 h
        tips = [b.find_element(By.TAG_NAME, "title").get_attribute("textContent") for b in bars]
        tokens = usage.get_attribute("data-tokens-24h")
        driver.get(f"{url}/status")  # the cookie keeps the session
        again = bool(driver.find_elements(By.ID, "routes"))
        shot.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(shot))
        return {
            "login": login,
            "wrong": wrong,
            "channels": channels,
            "circuits": circuits,
            "tokens_24h": tokens,
            "tips": tips,
            "again": again,
            "text": driver.find_element(By.TAG_NAME, "body").text,
        }
    finally:
        driver.quit()


@pytest.mark.skipif(
    not (shutil.which("chromium") and shutil.which("chromedriver")),
    reason="chromium and chromedriver are not installed (make system-deps installs them)",
)
async def test_the_page_in_a_browser_shows_routes_an_open_circuit_and_the_tokens_spent(tmp_path: Path):
    async with FakeOpenAI(answer="fine thanks") as good, FakeOpenAI() as bad:
        app = create_app(parse_config(config(tmp_path, good.base_url, bad.base_url), {}))
        async with serve_asgi(app) as url, httpx.AsyncClient() as c:
            tokens = await spend(url, bad)
            await written(c, url, 2)
            metrics = (await c.get(f"{url}/metrics")).text
            assert 'switchboard_circuit_state{provider="flaky"} 2.0' in metrics
            assert 'switchboard_circuit_state{provider="main"} 0.0' in metrics
            assert "switchboard_generations_in_flight 0.0" in metrics
            seen = await asyncio.to_thread(browse, url, ARTIFACTS / "status-page.png")
    assert seen["login"]["has_form"] and "sign in" in seen["login"]["title"]
    assert seen["wrong"] == "That is not an admin key."
    assert seen["channels"] == ["support", "backup", "playground"]
    assert seen["circuits"] == {"main": "closed", "flaky": "open", "paint": "closed"}
    assert seen["tokens_24h"] == str(tokens)
    assert sum(int(t.rsplit(": ", 1)[1].replace(",", "")) for t in seen["tips"]) == tokens
    assert seen["again"]
    assert "fake failure 500" in seen["text"]  # the failed attempt is among the last warnings
    assert ADMIN not in seen["text"] and "sk-up" not in seen["text"]
    assert "…k-up: ok" in seen["text"]  # keys are shown masked, with their state
    assert (ARTIFACTS / "status-page.png").stat().st_size > 10_000


async def test_access_needs_an_admin_key(tmp_path: Path):
    async with FakeOpenAI() as good:
        app = create_app(parse_config(config(tmp_path, good.base_url, good.base_url), {}))
        async with serve_asgi(app) as url, httpx.AsyncClient(base_url=url) as c:
            page = await c.get("/status")
            assert page.status_code == 401 and "name=key" in page.text
            assert (await c.get("/status", headers={"Authorization": f"Bearer {API_KEY}"})).status_code == 401
            assert (await c.get("/status", headers={"Authorization": f"Bearer {ADMIN}"})).status_code == 200
            wrong = await c.post(
                "/status/login", content=b"key=sk-status", headers={"content-type": "application/x-www-form-urlencoded"}
            )
            assert wrong.status_code == 401 and COOKIE not in wrong.headers.get("set-cookie", "")
            big = await c.post("/status/login", content=b"key=" + b"x" * 10_000)
            assert big.status_code == 413
            ok = await c.post("/status/login", content=f"key={ADMIN}".encode())
            assert ok.status_code == 303 and ok.headers["location"] == "/status"
            cookie = ok.headers["set-cookie"]
            assert "HttpOnly" in cookie and "SameSite=strict" in cookie and ADMIN not in cookie
            value = c.cookies.get(COOKIE)
            assert value and session_ok(value, [ADMIN])
            assert (await c.get("/status")).status_code == 200  # the client keeps the cookie
            c.cookies.set(COOKIE, value[:-1] + ("0" if value[-1] != "0" else "1"), path="/status")
            assert (await c.get("/status")).status_code == 401  # a forged cookie
            c.cookies.clear()
            c.cookies.set(COOKIE, session_value("another-key"), path="/status")
            assert (await c.get("/status")).status_code == 401
        closed = create_app(parse_config(config(tmp_path, good.base_url, good.base_url, admin=False), {}))
        async with serve_asgi(closed) as url, httpx.AsyncClient(base_url=url) as c:
            page = await c.get("/status", headers={"Authorization": f"Bearer {ADMIN}"})
            assert page.status_code == 403 and "SWITCHBOARD_ADMIN_KEY" in page.text


def test_a_session_expires():
    value = session_value(ADMIN, now=1_000.0)
    assert session_ok(value, ["other", ADMIN], now=1_000.0)
    assert not session_ok(value, [ADMIN], now=1_000.0 + 13 * 3600)
    assert not session_ok("garbage", [ADMIN]) and not session_ok("", [ADMIN])
