"""The drawing page in a real browser: Debian's headless Chromium, driven by Playwright."""

import os
import shutil

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def browser():
    if not CHROMIUM:
        if os.environ.get("CI") == "true":
            pytest.fail("Chromium is missing: .ci/run installs Debian's chromium package")
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield browser
        browser.close()


def draw(page, strokes):
    """Drag the mouse along each stroke, given in canvas coordinates (0-280)."""
    box = page.locator("#pad").bounding_box()
    for stroke in strokes:
        page.mouse.move(box["x"] + stroke[0][0], box["y"] + stroke[0][1])
        page.mouse.down()
        for x, y in stroke[1:]:
            page.mouse.move(box["x"] + x, box["y"] + y, steps=8)
        page.mouse.up()


@pytest.mark.parametrize(
    "digit, strokes",
    [
        ("1", [[(140, 40), (140, 240)]]),
        ("7", [[(70, 50), (210, 50), (120, 250)]]),
        ("0", [[(140, 40), (200, 80), (210, 160), (180, 230), (140, 245), (95, 225), (70, 150), (85, 75), (140, 40)]]),
    ],
)
def test_drawing_a_digit_shows_its_prediction(server, browser, digit, strokes):  # noqa: F811
    url, _ = server
    page = browser.new_page()
    requests = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(url)
    draw(page, strokes)
    page.wait_for_function(f"document.querySelector('#label').textContent === '{digit}'", timeout=10_000)
    bars = page.locator(".bar .value").all_inner_texts()
    assert len(bars) == 10 and float(bars[int(digit)]) > 0.5
    assert all(request.startswith(url) for request in requests)  # nothing fetched from elsewhere
    page.click("#clear")
    assert page.locator("#label").inner_text() == ""
    page.wait_for_timeout(300)  # an answer still on its way must not bring the old digit back
    assert page.locator("#label").inner_text() == ""
