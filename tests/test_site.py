"""The course's website (``make site``) in real headless Chromium: every page, every picture, formula and link.

The site is built once per run by :func:`course_lib.tools.site.build`, or reused when ``make site``
already built it from the same inputs (``.ci/run`` builds it before ``make test``, so CI builds it
once). A loopback HTTP server serves ``_build/site/html``; Chromium opens every page of it (each
``index.html``) and the test checks, per page: no console error, no uncaught exception and no
failed request; every ``<img>`` decoded (``naturalWidth > 0``); as many KaTeX formulas as the
page's MyST tree (``*.json`` beside the pages) holds math nodes, none of them a KaTeX error, and no
raw ``$$`` left in the text; every link inside the site goes to a page that exists and, with a
``#fragment``, to an element of that page with that id. Screenshots of three pages go to
tests/artifacts/.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import http.server
import json
import os
import shutil
import threading
import time
from pathlib import Path
from urllib.parse import urljoin, urlparse

import pytest

from course_lib.tools import site

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
pytestmark = pytest.mark.browser


def _missing(why: str):
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but {why}; .ci/run installs Node.js and `make site-theme` builds the theme")
    pytest.skip(why)


@pytest.fixture(scope="module")
def html():
    """The built site's folder (built here when missing or stale); reports how long the build took.

    ``COURSE_SITE_HTML=FOLDER`` opens that build as it is instead (one made elsewhere)."""
    if os.environ.get("COURSE_SITE_HTML"):
        return Path(os.environ["COURSE_SITE_HTML"])
    if shutil.which("node") is None:
        _missing("Node.js is not installed (apt-get install nodejs npm)")
    if not site.theme_ready():
        _missing("the site's theme is not built (make site-theme)")
    if site.stale():
        start = time.monotonic()
        out = site.build(quiet=True)
        print(f"\nbuilt the site in {time.monotonic() - start:.1f} s")
        return out
    return site.OUT / "html"


@contextlib.contextmanager
def serve(folder: Path):
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def page_paths(html: Path) -> list[str]:
    """Every page's URL path: ``/`` and ``/a/b/`` for each ``a/b/index.html``."""
    return sorted("/" + p.parent.relative_to(html).as_posix().strip(".") + ("/" if p.parent != html else "")
                  for p in html.rglob("index.html") if "build" not in p.relative_to(html).parts[:1])


def math_nodes(tree) -> list[str]:
    """The TeX of every math node (``math``, ``inlineMath``) of a MyST tree."""
    if isinstance(tree, dict):
        own = [tree.get("value", "")] if tree.get("type") in ("math", "inlineMath") else []
        return own + [tex for v in tree.values() for tex in math_nodes(v)]
    if isinstance(tree, list):
        return [tex for v in tree for tex in math_nodes(v)]
    return []


def page_json(html: Path, path: str) -> Path:
    parts = [p for p in path.strip("/").split("/") if p]
    return html / (".".join(parts) + ".json" if parts else "index.json")


IMAGES_JS = """async () => {
  const imgs = Array.from(document.images);
  for (const img of imgs) { img.loading = 'eager'; }
  await Promise.all(imgs.map(img => img.decode().catch(() => null)));
  return imgs.map(img => ({src: img.currentSrc || img.src, width: img.naturalWidth}));
}"""
# visible text outside code, and the page's links and ids
TEXT_JS = """() => {
  const clone = document.querySelector('main, article, body').cloneNode(true);
  clone.querySelectorAll('pre, code, .katex, script, style').forEach(n => n.remove());
  return clone.innerText;
}"""


def test_every_page_loads_with_its_pictures_formulas_and_links(html, chromium_path, tmp_path):
    from playwright.sync_api import sync_playwright

    from course_lib.tools.browser import chromium

    paths = page_paths(html)
    expected = sum(len(part) for part in site.pages().values())
    assert len(paths) == expected, f"{len(paths)} pages built, {expected} in the table of contents: {paths}"
    assert not any("solution" in p for p in paths), f"a solutions page is on the site: {paths}"
    ARTIFACTS.mkdir(exist_ok=True)
    problems, ids, links = [], {}, []
    start = time.monotonic()
    with serve(html) as url, sync_playwright() as p, chromium(p, tmp_path / "profile", chromium_path) as page:
        errors = []
        page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
        # a request the browser itself cancels (a lazy chunk when the test moves on) is no missing file
        page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url} {r.failure}")
                if "ERR_ABORTED" not in (r.failure or "") else None)
        page.on("response", lambda r: errors.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
        for path in paths:
            errors.clear()
            page.goto(url + path, wait_until="networkidle")
            images = page.evaluate(IMAGES_JS)
            problems += [f"{path}: picture not loaded: {i['src']}" for i in images if i["width"] == 0]
            # each formula of the page's MyST tree rendered by KaTeX (its TeX is the rendering's annotation)
            want = collections.Counter(math_nodes(json.loads(page_json(html, path).read_text())))
            have = collections.Counter(t.strip() for t in page.evaluate(
                "() => Array.from(document.querySelectorAll('.katex annotation'), a => a.textContent)"))
            missing = {tex: n - have[tex.strip()] for tex, n in want.items() if have[tex.strip()] < n}
            if missing:
                problems.append(f"{path}: {sum(missing.values())} of {sum(want.values())} formulas not rendered, "
                                f"e.g. {list(missing)[:3]}")
            if sum(want.values()) and not have:
                problems.append(f"{path}: no KaTeX formula on a page whose source has math")
            if page.locator(".katex-error").count():
                problems.append(f"{path}: {page.locator('.katex-error').count()} KaTeX error(s)")
            if "$$" in page.evaluate(TEXT_JS):
                problems.append(f"{path}: raw '$$' left in the text")
            ids[path] = set(page.evaluate("() => Array.from(document.querySelectorAll('[id]'), n => n.id)"))
            hrefs = page.evaluate("() => Array.from(document.querySelectorAll('a[href]'), a => a.getAttribute('href'))")
            links += [(path, href) for href in hrefs]
            problems += [f"{path}: {e}" for e in errors]
            name = path.strip("/").replace("/", "_") or "index"
            if name in ("index", "notebooks_attention", "notebooks_explore-memories"):
                page.screenshot(path=str(ARTIFACTS / f"site_{name}.png"), full_page=False)
    print(f"\nopened {len(paths)} pages in {time.monotonic() - start:.1f} s, checked {len(links)} links")
    for source, href in links:
        target = urlparse(urljoin("http://site" + source, href))
        if target.netloc != "site" or href.startswith(("mailto:", "javascript:")):
            continue
        path = target.path if target.path.endswith("/") or "." in target.path.rsplit("/", 1)[-1] else target.path + "/"
        if path in ids:
            if target.fragment and target.fragment not in ids[path]:
                problems.append(f"{source}: link {href!r}: no element with id {target.fragment!r} on {path}")
        elif not (html / path.lstrip("/")).is_file():
            problems.append(f"{source}: link {href!r} goes to no page or file of the site")
    assert not problems, f"{len(problems)} problem(s):\n" + "\n".join(problems[:60])


def test_navigation_lists_the_lessons_in_order_and_the_landing_page_has_the_map(html, chromium_path, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from course_lib.tools import lesson_map
    from course_lib.tools.browser import chromium

    lessons = lesson_map.lessons()
    with serve(html) as url, sync_playwright() as p, chromium(p, tmp_path / "profile", chromium_path) as page:
        # on a lesson's page the sidebar's "Lessons" group is open
        page.goto(url + "/notebooks/welcome/", wait_until="networkidle")
        nav = page.locator(".myst-toc").first.inner_text()
        positions = [nav.find(f"{lesson.number} · {lesson.title}") for lesson in lessons]
        assert -1 not in positions, f"lessons missing from the navigation: {nav}"
        assert positions == sorted(positions), f"navigation not in lesson order: {nav}"
        page.goto(url + "/", wait_until="networkidle")
        table = page.locator("table").filter(has_text="what it covers")
        expect(table.locator("tr")).to_have_count(len(lessons) + 1)  # a header row and one per lesson
        # the map's links open the lessons' pages
        table.locator("a", has_text=lessons[1].title).click()
        expect(page.locator("h1").first).to_contain_text(lessons[1].title)
        # a live explorer became its picture and a sentence saying it needs a kernel
        page.goto(url + "/notebooks/explore-memories/", wait_until="networkidle")
        expect(page.get_by_text("need a running Python kernel").first).to_be_visible()
        # mystmd's built-in search finds a lesson from its words
        page.keyboard.press("Control+k")
        page.keyboard.type("compressive")
        expect(page.locator("[role=dialog], dialog").get_by_text("Compressive", exact=False).first).to_be_visible()
