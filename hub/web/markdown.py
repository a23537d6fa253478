"""Model cards: Markdown rendered to HTML, then sanitized, so a README's markup cannot run."""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable

import nh3
from markdown_it import MarkdownIt
from markupsafe import Markup

#: Rendered cards kept per process, keyed by the README's sha256 (its bytes never change).
CACHED_CARDS = 64

_markdown = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])
_cache: OrderedDict[str, Markup] = OrderedDict()
_lock = threading.Lock()


def render_markdown(text: str) -> Markup:
    """Markdown (with inline HTML, as model cards use it) as safe HTML: nh3 keeps a fixed
    set of tags and attributes, so no script, event handler or javascript: URL survives."""
    html = _markdown.render(text)
    clean = nh3.clean(html, url_schemes={"http", "https", "mailto"},
                      link_rel="noopener noreferrer nofollow")
    return Markup(clean)


def card_html(sha256: str, load: Callable[[], str]) -> Markup:
    """The rendered card of the README whose digest is `sha256`; `load` reads its text."""
    with _lock:
        if sha256 in _cache:
            _cache.move_to_end(sha256)
            return _cache[sha256]
    rendered = render_markdown(load())
    with _lock:
        _cache[sha256] = rendered
        while len(_cache) > CACHED_CARDS:
            _cache.popitem(last=False)
    return rendered
