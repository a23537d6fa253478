"""Model cards: Markdown with inline HTML, rendered, then nothing in it can run."""
from __future__ import annotations

import re

import pytest

from hub.web.markdown import card_html, render_markdown

VECTORS = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "<svg onload=alert(1)><script>alert(1)</script></svg>",
    '<a href="javascript:alert(1)">x</a>',
    "[x](javascript:alert(1))",
    "[x](JaVaScRiPt:alert(1))",
    '<a href="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">x</a>',
    '<iframe src="https://example.com"></iframe>',
    '<object data="x.swf"></object>',
    '<form action="/signout" method="post"><button>go</button></form>',
    '<div style="background:url(javascript:alert(1))">x</div>',
    '<meta http-equiv="refresh" content="0;url=https://example.com">',
    '<base href="https://example.com/">',
    '<link rel="stylesheet" href="https://example.com/x.css">',
    "<style>body{display:none}</style>",
    '<p onclick="alert(1)" onmouseover="alert(1)">x</p>',
    "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>",
]


@pytest.mark.parametrize("vector", VECTORS)
def test_nothing_in_a_card_can_run_or_reach_out(vector):
    html = str(render_markdown(f"# Card\n\n{vector}\n"))
    lowered = html.lower()
    for tag in ("<script", "<iframe", "<object", "<form", "<meta", "<base", "<link",
                "<style", "<svg", "<math"):
        assert tag not in lowered, html
    assert not re.search(r"\son[a-z]+\s*=", lowered), html
    # As text it is harmless; as a link or a source it would run.
    assert not re.search(r"(href|src)\s*=\s*[\"']?\s*(javascript|data):", lowered), html
    assert "style=" not in lowered, html


def test_markdown_features_of_model_cards_survive():
    html = str(render_markdown("# T\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n~~old~~ *em* "
                               "`code`\n\n```python\nprint(1)\n```\n\n[hub](https://x.org)"
                               "\n\n<details><summary>more</summary>text</details>\n"))
    for fragment in ("<table>", "<td>1</td>", "<s>old</s>", "<em>em</em>", "<code>code</code>",
                     "print(1)", '<a href="https://x.org" rel="noopener noreferrer nofollow">',
                     "<details>", "<summary>more</summary>"):
        assert fragment in html, fragment


def test_cards_are_rendered_once_per_digest():
    calls = []

    def load():
        calls.append(1)
        return "# Once"

    first = card_html("f" * 64, load)
    assert card_html("f" * 64, load) == first and len(calls) == 1
