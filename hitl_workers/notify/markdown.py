"""Popup text: Markdown in, sanitized HTML out (contract §6, the ``html`` field).

Two independent layers, so one bug does not become an XSS in every agent console:

1. markdown-it-py in CommonMark mode; every link it finds becomes an ``<a>``.
2. nh3 (ammonia) with an explicit allow-list: the tags below, ``href``/``title`` on links only,
   absolute http/https/mailto/tel URLs only (relative ones are dropped too: on the console's own
   origin a link like ``/?token=…`` would sign the agent in as someone else), and
   ``rel="noopener noreferrer nofollow"`` on every link. A disallowed URL loses its ``href``; the
   link text stays.

Images are not allowed (no tracking pixels in front of agents); neither are ``style``, ``class``
or ``target``.

Raw HTML in the text is passed to the sanitizer rather than escaped, so that hostile markup is
*removed* (docs/contract.md §6: "removed, not just escaped"): ``<script>`` and ``<style>`` go with
their content, other disallowed tags go and keep their text, event handlers and bad URLs go.
"""

from __future__ import annotations

from functools import lru_cache

import nh3
from markdown_it import MarkdownIt

__all__ = ["render_markdown"]

ALLOWED_TAGS = frozenset(
    {
        "p", "br", "strong", "em", "code", "pre", "ul", "ol", "li", "blockquote", "a", "hr",
        "h1", "h2", "h3", "h4", "h5", "h6",
        "del", "s",  # markdown-it renders ~~text~~ as <s>
        "table", "thead", "tbody", "tr", "th", "td",
    }
)  # fmt: skip
ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "ol": {"start"}}
URL_SCHEMES = frozenset({"http", "https", "mailto", "tel"})
LINK_REL = "noopener noreferrer nofollow"

# Built once: both are reusable and thread-safe for rendering.
# "breaks": a newline in the popup text is a line break, as people typing into a text box expect.
_MD = MarkdownIt(
    "commonmark", {"html": True, "linkify": False, "typographer": False, "breaks": True}
).enable(["table", "strikethrough"])
# Every Markdown link becomes an <a>, and the sanitizer decides its href: a `javascript:` or
# `data:` link keeps its text and loses its URL, instead of staying on the page as the
# literal "[text](javascript:…)" that markdown-it's own check would leave.
_MD.validateLink = lambda url: True  # type: ignore[method-assign]  # markdown-it's own hook
_CLEANER = nh3.Cleaner(
    tags=set(ALLOWED_TAGS),
    clean_content_tags={"script", "style"},
    attributes={tag: set(names) for tag, names in ALLOWED_ATTRIBUTES.items()},
    url_schemes=set(URL_SCHEMES),
    url_relative="deny",
    link_rel=LINK_REL,
    strip_comments=True,
)


RENDER_CACHE_SIZE = 256
"""Popup texts whose HTML this process keeps (least recently used first out): at most
256 × (20,000 characters of text + its HTML), a few MB at the very worst, far less for real
popups."""


@lru_cache(maxsize=RENDER_CACHE_SIZE)
def render_markdown(text: str) -> str:
    """Return ``text`` (Markdown) rendered to HTML that is safe to insert into an agent's page.

    The output has no script, no event-handler or style attributes, no images and no links other
    than absolute http, https, mailto and tel ones. Deterministic: the same text always gives
    the same HTML.

    Because it is deterministic, the result is cached by ``text`` (a bounded LRU,
    :data:`RENDER_CACHE_SIZE` texts): a popup's text is the flow step's configuration and
    repeats across conversations, and rendering it cost ~0.1 ms of every dispatch. A text
    seen for the first time is rendered as before. Nothing else is an input (the renderer and
    the allow-list are fixed at import), so a cached HTML is the one a fresh render gives.
    """
    return sanitize_html(_MD.render(text))


def sanitize_html(html: str) -> str:
    """``html`` reduced to what :func:`render_markdown` may produce: the one allow-list that
    the workers (rendering) and the gateway (checking what the stream carries) both apply."""
    return _CLEANER.clean(html)
