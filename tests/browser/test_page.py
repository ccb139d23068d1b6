"""The draw-a-digit page in a real browser (Chromium through Playwright) against a real server."""

import itertools
import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.images import encode
from tests.server import ServerProcess, fresh_deployment
from training import outliers
from training.data import Mnist

playwright_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SHOTS = Path(os.environ.get("SCREENSHOT_DIR", "artifacts/screenshots"))
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    ),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, trained_checkpoint: Path) -> Iterator[ServerProcess]:
    env = fresh_deployment(tmp_path_factory.mktemp("page"), trained_checkpoint)
    # Jobs of two processes allowed: the panel offers the choice.
    env.update(MNIST_TRAIN_MAX_PROCS="2", MNIST_DEVICE="cpu")
    with ServerProcess(env, ready_path="/readyz") as running:
        yield running


@pytest.fixture(scope="module")
def page(server: ServerProcess) -> Iterator["playwright_api.Page"]:
    SHOTS.mkdir(parents=True, exist_ok=True)
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(server.url + "/")
        page.wait_for_function("document.getElementById('model-version').textContent.length > 3")
        yield page
        browser.close()


def draw(page: "playwright_api.Page", strokes: list[list[tuple[float, float]]]) -> None:
    """Draw strokes with the mouse; coordinates are fractions of the canvas."""
    box = page.locator("#pad").bounding_box()
    assert box is not None
    for stroke in strokes:
        x, y = stroke[0]
        page.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"])
        page.mouse.down()
        for (x0, y0), (x1, y1) in itertools.pairwise(stroke):
            for step in range(1, 11):
                t = step / 10
                page.mouse.move(
                    box["x"] + (x0 + (x1 - x0) * t) * box["width"],
                    box["y"] + (y0 + (y1 - y0) * t) * box["height"],
                )
        page.mouse.up()


def predicted(page: "playwright_api.Page", digit: str) -> None:
    page.wait_for_function(f"document.getElementById('digit').textContent === '{digit}'", timeout=10000)


def bar_widths(page: "playwright_api.Page") -> list[tuple[float, float]]:
    """Each bar's rendered fill as a fraction of its track, beside the probability it shows."""
    rows: list[tuple[float, float]] = page.evaluate(
        """[...document.querySelectorAll('#bars li')].map(li => [
            li.querySelector('.fill').getBoundingClientRect().width
              / li.querySelector('.track').getBoundingClientRect().width,
            parseFloat(li.lastElementChild.textContent) / 100])"""
    )
    return rows


def assert_bars_drawn(page: "playwright_api.Page", digit: str) -> None:
    """Each bar as wide as its probability says (so together they fill one track), the predicted
    digit's the widest."""
    bars = bar_widths(page)
    assert len(bars) == 10
    assert max(bars) == bars[int(digit)], bars
    assert sum(width for width, _ in bars) == pytest.approx(1.0, abs=0.02), bars
    for width, probability in bars:
        assert width == pytest.approx(probability, abs=0.01), bars


@pytest.mark.parametrize(
    ("digit", "strokes"),
    [
        ("1", [[(0.5, 0.15), (0.5, 0.85)]]),
        ("7", [[(0.25, 0.2), (0.75, 0.2), (0.45, 0.85)]]),
    ],
)
def test_drawing_a_digit_shows_its_prediction(page: "playwright_api.Page", digit: str, strokes) -> None:
    page.click("#clear")
    # Before there is an image: nothing where it will go (no broken-image icon, no alt text).
    assert not page.locator("#seen").is_visible()
    draw(page, strokes)
    predicted(page, digit)
    assert page.locator("#seen").is_visible()
    assert_bars_drawn(page, digit)
    assert page.locator("#confidence").inner_text().endswith("%")
    assert page.locator("#seen").get_attribute("src").startswith("data:image/png;base64,")
    assert page.locator("#error").inner_text() == ""
    page.screenshot(path=str(SHOTS / f"drawn-{digit}.png"), full_page=True)


def test_uploading_a_real_mnist_png(page: "playwright_api.Page", mnist: Mnist) -> None:
    label = str(int(mnist.test_labels[3]))
    page.set_input_files(
        "#file",
        files=[{"name": "digit.png", "mimeType": "image/png", "buffer": encode(mnist.test_images[3])}],
    )
    predicted(page, label)
    assert_bars_drawn(page, label)
    page.screenshot(path=str(SHOTS / "uploaded.png"), full_page=True)


def pixels_where(page: "playwright_api.Page", canvas: str, condition: str) -> int:
    """How many pixels of the canvas with id `canvas` meet `condition`, a JavaScript expression of
    r, g, b and a."""
    count: int = page.evaluate(
        f"""(() => {{
            const c = document.getElementById('{canvas}');
            const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let inked = 0;
            for (let i = 0; i < data.length; i += 4) {{
                const [r, g, b, a] = [data[i], data[i + 1], data[i + 2], data[i + 3]];
                if ({condition}) inked++;
            }}
            return inked;
        }})()"""
    )
    return count


def pad_ink(page: "playwright_api.Page") -> int:
    """How many of the drawing pad's pixels are not black."""
    return pixels_where(page, "pad", "r > 0")


def test_a_dropped_file_and_the_keys(page: "playwright_api.Page", mnist: Mnist) -> None:
    """A PNG dropped on the drop zone is predicted (the zone marked while dragged over);
    Enter on the zone opens the file chooser (clicks the file input); Delete on the pad wipes the
    drawing."""
    label = str(int(mnist.test_labels[5]))
    page.evaluate(
        """(bytes) => {
            const data = new DataTransfer();
            data.items.add(new File([new Uint8Array(bytes)], 'dropped.png', {type: 'image/png'}));
            const zone = document.getElementById('drop');
            const drag = (kind) => new DragEvent(kind, {dataTransfer: data, bubbles: true, cancelable: true});
            zone.dispatchEvent(drag('dragover'));
            window.markedWhileOver = zone.classList.contains('over');
            zone.dispatchEvent(drag('drop'));
        }""",
        list(encode(mnist.test_images[5])),
    )
    predicted(page, label)
    assert page.evaluate("window.markedWhileOver") is True
    assert "over" not in (page.locator("#drop").get_attribute("class") or "")
    # Enter on the zone clicks the file input, which is what opens the browser's file chooser. The
    # click is seen and its default stopped, so that no chooser stays open on the page this module's
    # tests share.
    page.evaluate(
        "document.getElementById('file').addEventListener('click', (event) => {"
        " event.preventDefault(); window.chooserOpened = true; }, {once: true})"
    )
    page.focus("#drop")
    page.keyboard.press("Enter")
    page.wait_for_function("window.chooserOpened === true", timeout=5000)
    draw(page, [[(0.5, 0.2), (0.5, 0.8)]])
    assert pad_ink(page) > 100
    page.focus("#pad")
    page.keyboard.press("Delete")
    assert pad_ink(page) == 0


def test_api_errors_are_shown_in_words(page: "playwright_api.Page") -> None:
    page.set_input_files("#file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hello"}])
    page.wait_for_function("document.getElementById('error').textContent.includes('not an image')")


def test_a_file_chosen_while_a_drawing_s_image_is_being_made_is_the_answer_shown(
    page: "playwright_api.Page",
) -> None:
    """A drawing's image is made asynchronously (canvas.toBlob): a file chosen before it is ready is
    the newer request, and the drawing's late answer must not replace the file's."""
    page.click("#clear")
    page.evaluate(
        """() => {
            window.realToBlob = HTMLCanvasElement.prototype.toBlob;
            HTMLCanvasElement.prototype.toBlob = function (callback, ...rest) {
                setTimeout(() => window.realToBlob.call(this, callback, ...rest), 1000);
            };
            window.realFetch = window.fetch;
            window.answered = 0;
            window.fetch = async (...args) => {
                const response = await window.realFetch(...args);
                await response.clone().text();  // the whole answer is in
                window.answered += 1;
                return response;
            };
        }"""
    )
    try:
        draw(page, [[(0.5, 0.15), (0.5, 0.85)]])
        page.set_input_files(
            "#file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hi"}]
        )
        page.wait_for_function("document.getElementById('error').textContent.includes('not an image')")
        page.wait_for_function("window.answered === 2")  # the drawing's answer came too, a second later
        page.evaluate("new Promise((resolve) => setTimeout(resolve, 50))")  # and was handled
        assert "not an image" in page.locator("#error").inner_text()
        assert page.locator("#digit").inner_text() == "\u2013"  # the dash of no digit shown
    finally:
        page.reload()  # the page's own toBlob and fetch again, for the tests after this one
        page.wait_for_load_state()


def heat_map(page: "playwright_api.Page") -> list[list[int]]:
    """The counts the heat map's cells show, row by row, after checking each cell is coloured."""
    cells: list[list[list[str]]] = page.evaluate(
        """[...document.querySelectorAll('#confusion tbody tr')].map(tr =>
            [...tr.querySelectorAll('td[data-count]')].map(td =>
                [td.dataset.count, td.textContent, getComputedStyle(td).backgroundColor]))"""
    )
    assert len(cells) == 10 and all(len(row) == 10 for row in cells), cells
    for digit, row in enumerate(cells):
        for col, (count, text, colour) in enumerate(row):
            assert count == text
            if col == digit or count != "0":  # right answers, and every error, are tinted
                assert colour not in ("rgba(0, 0, 0, 0)", "transparent"), (digit, col, colour)
    return [[int(count) for count, _, _ in row] for row in cells]


def test_the_heat_map_shows_the_serving_models_confusion_matrix(page: "playwright_api.Page") -> None:
    model = page.evaluate("fetch('/model').then((response) => response.json())")
    page.wait_for_function("!document.getElementById('confusion').hidden")
    shown = heat_map(page)
    assert shown == model["confusion_matrix"]
    assert sum(map(sum, shown)) == 10000
    assert sum(shown[d][d] for d in range(10)) / 100 == pytest.approx(model["test_accuracy"], abs=0.005)
    assert f"test accuracy {model['test_accuracy']}%" in page.locator("#card-summary").inner_text()


def test_the_reliability_diagram_beside_it_draws_the_card_s_bins(page: "playwright_api.Page") -> None:
    """A bar per non-empty bin of confidence, as high as the share right in it, and the expected
    calibration error in the caption."""
    calibration = page.evaluate("fetch('/model').then((response) => response.json())")["calibration"]
    page.wait_for_function("!document.getElementById('reliability-figure').hidden")
    bars = page.evaluate(
        """[...document.querySelectorAll('#reliability rect.bin')].map(bar =>
            [Number(bar.dataset.count), bar.getBBox().height, bar.querySelector('title').textContent])"""
    )
    filled = [row for row in calibration["reliability"] if row["count"]]
    assert [count for count, _, _ in bars] == [row["count"] for row in filled]
    plot = 190  # the plot's height in the SVG's units (app.js)
    for (_, height, title), row in zip(bars, filled, strict=True):
        assert height == pytest.approx(plot * row["accuracy"], abs=0.01)
        # One decimal, as the page rounds it (a tie such as 81.25 goes up there, to even in Python).
        shown = re.search(r"([\d.]+)% right", title)
        assert shown is not None and float(shown[1]) == pytest.approx(100 * row["accuracy"], abs=0.05 + 1e-9)
    caption = page.locator("#reliability-caption").inner_text()
    assert f"Expected calibration error {calibration['ece_percent']}%" in caption


def test_a_non_digit_is_said_to_be_one_and_the_card_s_kinds_are_shown(
    page: "playwright_api.Page", mnist: Mnist
) -> None:
    """Speckle, sent as a photo of it would come (dark on light): the page says it does not look
    like a digit; a digit after it clears the message. The card's table lists each kind."""
    model = page.evaluate("fetch('/model').then((response) => response.json())")
    speckle = np.asarray(outliers.speckle(np.random.default_rng(1)))
    page.set_input_files(
        "#file", files=[{"name": "dots.png", "mimeType": "image/png", "buffer": encode(speckle)}]
    )
    page.wait_for_function("!document.getElementById('not-a-digit').hidden")
    message = page.locator("#not-a-digit").inner_text()
    assert message.startswith("That does not look like a digit")
    page.screenshot(path=str(SHOTS / "not-a-digit.png"), full_page=True)
    page.set_input_files(
        "#file", files=[{"name": "d.png", "mimeType": "image/png", "buffer": encode(mnist.test_images[0])}]
    )
    page.wait_for_function("document.getElementById('not-a-digit').hidden")
    predicted(page, str(int(mnist.test_labels[0])))
    rows = page.evaluate(
        """[...document.querySelectorAll('#not-a-digit-kinds tbody tr')]
            .map(row => [...row.cells].map(cell => cell.textContent))"""
    )
    kinds = model["not_a_digit"]["kinds"]
    assert [row[0] for row in rows] == list(kinds)
    for kind, flagged, _, _ in rows:
        assert flagged == f"{kinds[kind]['flagged_percent']}%"
    caption = page.locator("#not-a-digit-caption").inner_text()
    assert f"flags {model['not_a_digit']['test_flagged_percent']}% of the test digits" in caption


def test_correcting_a_prediction(page: "playwright_api.Page", mnist: Mnist) -> None:
    """ "Wrong? It was:" sends the image on show with the digit chosen; the panel counts it."""
    page.click("#clear")
    assert not page.locator("#correct").is_visible()  # nothing on show to correct
    digit = mnist.test_images[1]
    page.set_input_files("#file", files=[{"name": "d.png", "mimeType": "image/png", "buffer": encode(digit)}])
    predicted(page, str(int(mnist.test_labels[1])))
    shown = page.evaluate("fetch('/feedback?limit=0').then((response) => response.json())")["counts"]
    page.click("#correct button[aria-label='It was a 4']")
    page.wait_for_function("document.getElementById('feedback-status').textContent.includes('Thank you')")
    assert "a 4, kept for training" in page.locator("#feedback-status").inner_text()
    assert not page.locator("#correct").is_visible()  # one correction per prediction
    listed = page.evaluate("fetch('/feedback').then((response) => response.json())")
    item = listed["items"][0]
    assert listed["counts"]["total"] == shown["total"] + 1
    assert (item["label"], item["status"]) == (4, "accepted")
    assert item["prediction_id"] and item["model_version"] == page.locator("#model-version").inner_text()
    accepted = shown["by_status"]["accepted"] + 1
    page.wait_for_function(
        f"document.getElementById('feedback-count').textContent.startsWith('({accepted} accepted')"
    )
    page.click("#clear")
    assert not page.locator("#correct").is_visible() and page.locator("#feedback-status").inner_text() == ""
    assert (
        page.evaluate(f"fetch('/feedback/{item['id']}', {{method: 'DELETE'}}).then((r) => r.status)") == 204
    )
    # The card says how the model does on held-out corrections, beside MNIST's figures.
    summary = page.locator("#card-summary")
    assert "Not measured on held-out corrections yet." in summary.inner_text()
    page.evaluate(
        "fetch('/model').then((r) => r.json()).then((model) =>"
        " showCard({...model, feedback_heldout: {count: 3, accuracy: 66.67}}))"
    )
    assert "Real world: 66.67% right on 3 held-out corrections." in summary.inner_text()
    page.evaluate("loadModel(); loadFeedbackCount()")


def canvas_ink(page: "playwright_api.Page") -> int:
    """How many of the training chart's pixels are drawn in the curves' colours."""
    return pixels_where(
        page, "curve", "a > 200 && ((b > 150 && r < 60) || (r > 190 && g > 90 && g < 140 && b < 60))"
    )


def test_training_from_the_panel(page: "playwright_api.Page", mnist: Mnist) -> None:
    """A job from the panel: its curves draw while it runs; worse than the serving model, it is
    rejected with the reason in words, and "Activate anyway" serves it."""
    page.set_input_files(
        "#file",
        files=[{"name": "digit.png", "mimeType": "image/png", "buffer": encode(mnist.test_images[0])}],
    )
    predicted(page, str(int(mnist.test_labels[0])))  # (what the page's picture in the docs shows)
    before = page.locator("#model-version").inner_text()
    assert canvas_ink(page) == 0
    page.fill("input[name=epochs]", "2")
    page.fill("input[name=limit_train]", "4000")
    assert page.locator("select[name=promote]").input_value() == "if_better"
    assert page.locator("#procs-field").is_visible()
    assert page.locator("input[name=nproc_per_node]").get_attribute("max") == "2"
    page.fill("input[name=nproc_per_node]", "2")
    page.check("input[name=use_feedback]")  # none are held: it trains on MNIST alone
    page.click("#train")
    # Points on the chart while the job still runs.
    page.wait_for_function(
        "document.getElementById('job-status').textContent.includes('running')"
        " && document.getElementById('job-status').textContent.includes('loss ')"
        " && Number(document.getElementById('curve').dataset.points) > 2",
        timeout=120000,
    )
    assert canvas_ink(page) > 50
    page.wait_for_function(
        "document.getElementById('job-status').textContent.includes('rejected')", timeout=180000
    )
    # The live figures in words: the last epoch, its loss and test accuracy.
    assert re.search(
        r"rejected, epoch 2 of 2, loss \d+\.\d{4}, test accuracy \d+\.\d\d%",
        page.locator("#job-status").inner_text(),
    ), page.locator("#job-status").inner_text()
    detail = page.locator("#job-detail").inner_text()
    assert "points below the active model's" in detail and "not promoted" in detail, detail
    assert page.locator("#model-version").inner_text() == before
    job = page.evaluate("fetch('/train?limit=1').then((response) => response.json())")["jobs"][0]
    assert job["hyperparameters"]["use_feedback"] is True
    drawn = int(page.locator("#curve").get_attribute("data-points"))
    assert drawn == len(job["progress"]["losses"]) + 2  # and one accuracy point per epoch
    assert page.locator("#activate").is_visible()
    page.screenshot(path=str(SHOTS / "rejected.png"), full_page=True)

    page.click("#activate")
    page.wait_for_function(
        f"document.getElementById('model-version').textContent === '{job['model_version']}'"
    )
    assert "activated by hand" in page.locator("#job-detail").inner_text()
    assert not page.locator("#activate").is_visible()
    trained = page.evaluate("fetch('/model').then((response) => response.json())")
    assert trained["distributed"]["world_size"] == 2
    page.wait_for_function(
        f"document.getElementById('card-summary').textContent.includes('{job['model_version']}')"
    )
    assert heat_map(page) == trained["confusion_matrix"]
