"""The annotation app in a real headless Chromium (Debian's `chromium`, driven by Playwright).

An admin creates an annotator; the annotator signs in and judges pairs with the
mouse and with the keyboard, ranks responses by dragging and by keyboard, and
rates a response; the rows in the store must match what was clicked. A
response holding a script must show as text and never run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from web_helpers import PASSWORD, make_app, make_store

from alignloop.web.server import background

pytestmark = pytest.mark.browser

XSS = '<script>document.title="pwned"</script><img src="x" onerror="document.body.dataset.pwned=1">'


def sign_in(page, base: str, name: str) -> None:
    page.goto(f"{base}/login")
    page.fill("#name", name)
    page.fill("#password", PASSWORD)
    with page.expect_navigation():
        page.click("#sign-in")


def submitted(page, action) -> None:  # noqa: ANN001
    """Run `action` (which submits the form) and wait for the next page."""
    with page.expect_navigation():
        action()


def take_next(page) -> None:  # noqa: ANN001
    """Press the queue page's button that takes the next item (a GET never takes one)."""
    submitted(page, lambda: page.click("#next-item"))


def test_admin_creates_annotator_who_judges_pairs_ranking_and_rating(browser, tmp_path):
    store = make_store(tmp_path / "feedback.db")
    store.add_items([{"prompt": "Tell a story about a cat.", "responses": ["The cat slept. The end.", XSS]},
                     {"prompt": "Tell a story about a dog.", "responses": ["A dog ran.", "A dog ran and ran."]}])
    admin_context, annotator_context = browser.new_context(), browser.new_context()
    with background(make_app(store)) as base:
        admin = admin_context.new_page()
        sign_in(admin, base, "admin")
        assert admin.url.endswith("/admin")
        admin.goto(f"{base}/admin/users")
        admin.fill("#new-name", "carol")
        admin.fill("#new-password", PASSWORD)
        submitted(admin, lambda: admin.click("#create-user"))
        assert "Created carol" in admin.inner_text("#created")

        page = annotator_context.new_page()
        sign_in(page, base, "carol")
        assert page.url.endswith("/queue")
        assert store.current_assignment(store.user_by_name("carol").id) is None  # signing in took nothing
        take_next(page)
        expected: dict[int, dict] = {}

        # First pair, with the mouse. Whichever item comes first, check the script stays text.
        item_id = int(page.get_attribute("#item", "data-item-id"))
        assert page.get_attribute("#item", "data-kind") == "pair"
        if XSS in page.inner_text(".pair"):
            assert page.title() != "pwned" and page.evaluate("document.body.dataset.pwned") is None
        page.click("label:has(#choice-b)")
        page.click("label:has(#strength-3)")
        page.fill("#critique", "B stays with the prompt.")
        submitted(page, lambda: page.click("#submit"))
        expected[item_id] = {"choice": "b", "strength": 3, "critique": "B stays with the prompt."}

        # Second pair, with the keyboard only.
        assert "Done 1" in page.inner_text("#progress")
        item_id = int(page.get_attribute("#item", "data-item-id"))
        page.keyboard.press("a")
        assert page.is_checked("#choice-a")
        page.keyboard.press("2")
        submitted(page, lambda: page.keyboard.press("Enter"))
        expected[item_id] = {"choice": "a", "strength": 2, "critique": None}
        assert "Nothing left" in page.inner_text("main")

        # The script in the first item never ran, on any page.
        assert page.title() != "pwned" and page.evaluate("document.body.dataset.pwned") is None
        cat = store.get_item(min(expected))
        assert XSS in [r.text for r in cat.responses]

        # A ranking: drag the last response to the top, then move the (new) second one down by keyboard.
        [ranking_id] = store.add_samples(None, [{"prompt": "Rank these.", "responses": ["one", "two", "three"]}],
                                         "ranking")
        page.goto(f"{base}/queue")
        take_next(page)
        assert page.get_attribute("#item", "data-kind") == "ranking"
        ids = [int(x) for x in page.eval_on_selector_all("#ranking-list li", "els => els.map(e => e.dataset.responseId)")]
        page.drag_and_drop(f"#rank-{ids[2]}", f"#rank-{ids[0]}")
        order = [int(x) for x in page.eval_on_selector_all("#ranking-list li", "els => els.map(e => e.dataset.responseId)")]
        assert order == [ids[2], ids[0], ids[1]]
        page.focus(f"#rank-{ids[0]}")
        page.keyboard.press("Shift+ArrowDown")
        order = [int(x) for x in page.eval_on_selector_all("#ranking-list li", "els => els.map(e => e.dataset.responseId)")]
        assert order == [ids[2], ids[1], ids[0]]
        assert page.input_value("#ranking") == ",".join(map(str, order))
        submitted(page, lambda: page.click("#submit"))
        expected[ranking_id] = {"ranking": order}

        # A rating of one response on every aspect.
        [rating_id] = store.add_items([{"prompt": "Rate this.", "responses": ["A short, kind story."]}])
        page.goto(f"{base}/queue")
        take_next(page)
        assert page.get_attribute("#item", "data-kind") == "rating"
        response_id = store.get_item(rating_id).responses[0].id
        scores = {"helpfulness": 4, "harmlessness": 5, "coherence": 3, "accuracy": 2}
        for aspect, score in scores.items():
            page.click(f"label:has(#rating-{response_id}-{aspect}-{score})")
        submitted(page, lambda: page.click("#submit"))
        expected[rating_id] = {"ratings": {response_id: scores}}
        assert "Done 4" in page.inner_text("#progress")
        admin_context.close()
        annotator_context.close()

    rows = {row["item_id"]: row for row in store.judgment_rows() if row["annotator"] == "carol"}
    assert set(rows) == set(expected)
    for item_id, want in expected.items():
        for key, value in want.items():
            assert rows[item_id][key] == value, (item_id, key)
        assert rows[item_id]["time_spent_ms"] >= 0  # measured by the server, never sent by the page
    store.close()


LONG_WORD = "Supercalifragilisticexpialidocious" * 4  # no place to break: must still not widen the page


@pytest.mark.parametrize("width", [1280, 390])
def test_annotator_page_fits_the_screen_and_the_key_help_opens_where_the_user_is(browser, tmp_path, width):
    """No horizontal scrolling at desktop and phone widths (screenshots kept in ALIGNLOOP_SCREENSHOTS or
    the test's folder), and the `?` help is an overlay in view wherever the page is scrolled to."""
    shots = Path(os.environ.get("ALIGNLOOP_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    store = make_store(tmp_path / "feedback.db")
    story = " ".join(["Once upon a time a small robot walked to the sea and looked at the waves."] * 25)
    store.add_items([{"prompt": f"Tell a long story. {LONG_WORD}", "responses": [story, story + " " + LONG_WORD]},
                     {"prompt": "Rate this.", "responses": [story]}])
    context = browser.new_context(viewport={"width": width, "height": 700})
    page = context.new_page()
    overflow = "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    with background(make_app(store)) as base:
        sign_in(page, base, "admin")  # the widest header: every admin link
        page.goto(f"{base}/queue")
        take_next(page)
        seen = []
        for _ in range(2):
            kind = page.get_attribute("#item", "data-kind")
            seen.append(kind)
            page.screenshot(path=str(shots / f"queue-{kind}-{width}.png"), full_page=True)
            assert page.evaluate(overflow) <= 0, (kind, width)
            header = page.locator("header.top").bounding_box()
            assert header["x"] >= 0 and header["x"] + header["width"] <= width

            # The help, opened at the bottom of a long page, is in view and keeps keys from acting behind it.
            page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
            page.keyboard.press("?")
            assert page.is_visible("#help")
            box = page.locator(".help-box").bounding_box()
            assert box["y"] >= 0 and box["y"] + box["height"] <= 700 and box["x"] >= 0 and box["x"] + box["width"] <= width
            page.screenshot(path=str(shots / f"queue-{kind}-{width}-help.png"))
            if kind == "pair":
                page.keyboard.press("a")
                assert not page.is_checked("#choice-a")
            page.keyboard.press("Escape")
            assert not page.is_visible("#help")
            # On a phone there is no "?" key: the button opens it, Close shuts it.
            page.click("#show-help")
            assert page.is_visible("#help")
            page.click("#close-help")
            assert not page.is_visible("#help")

            if len(seen) == 1:
                page.evaluate("document.activeElement.blur()")  # Enter on the focused help button would reopen it
                if kind == "pair":
                    page.keyboard.press("b")
                    page.keyboard.press("1")
                else:
                    for aspect in ("helpfulness", "harmlessness", "coherence", "accuracy"):
                        page.click(f"#item label:has([id$='-{aspect}-4'])")
                submitted(page, lambda: page.keyboard.press("Enter"))
        assert sorted(seen) == ["pair", "rating"]
        context.close()
    store.close()
