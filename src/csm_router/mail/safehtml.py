"""The customer's HTML made safe to show a CSM: balanced, nothing active, no styling."""

from __future__ import annotations

import contextlib
import html
import re
from html.parser import HTMLParser

import nh3

from csm_router.core.quotes import defuse_html

# What the customer's HTML keeps in a forward: structure, ordinary formatting, tables,
# images and links. No <style>, no style or class attributes, no colours: nothing the
# customer writes can restyle, cover or imitate the context block above it.
_HTML_TAGS = (nh3.ALLOWED_TAGS - {"map", "area", "details", "summary"}) | {"font", "tfoot"}
_HTML_DROPPED_WITH_CONTENT = {
    "script", "style", "title", "template", "noscript", "iframe", "object", "embed",
    "svg", "math",
}
_CELL = {"width", "colspan", "rowspan", "valign", "headers"}
_HTML_ATTRIBUTES = {
    "*": {"dir", "lang", "title", "align"},
    "a": {"href", "hreflang"},
    "img": {"src", "alt", "width", "height"},
    "table": {"width", "border", "cellpadding", "cellspacing", "summary"},
    "td": _CELL, "th": _CELL | {"scope"}, "tr": {"valign"},
    "col": {"span", "width"}, "colgroup": {"span", "width"},
    "ol": {"start", "type"}, "ul": {"type"}, "li": {"value"},
    "blockquote": {"cite"}, "q": {"cite"}, "del": {"datetime"}, "ins": {"datetime"},
    "time": {"datetime"}, "font": {"face", "size"}, "hr": {"width", "size"},
}
_LINK_SCHEMES = frozenset({"http", "https", "mailto", "tel"})
# cid: for the images the message carries; data: only for raster images (an SVG can script).
_IMAGE_SCHEMES = frozenset({"http", "https", "cid"})
_DATA_IMAGE = re.compile(r"data:image/(?:png|gif|jpeg|jpg|webp|bmp)[;,]")
_SCHEME = re.compile(r"([a-z][a-z0-9+.-]*):")
# Browsers ignore ASCII whitespace and controls in a URL's scheme ("java\tscript:").
_URL_NOISE = re.compile(r"[\x00-\x20]+")
# html5ever checks scopes by walking the open elements, so deep nesting is quadratic
# there (1 MB of "<div>" took 90 s); nothing legitimate nests this deep.
_MAX_DEPTH = 100
_VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link",
                   "meta", "param", "source", "track", "wbr"})
_SIBLINGS = {"p": ("p",), "li": ("li",), "dt": ("dt", "dd"), "dd": ("dt", "dd"),
             "tr": ("tr",), "td": ("td", "th"), "th": ("td", "th"), "option": ("option",)}
_TAG_NAME = re.compile(r"[a-z][a-z0-9:-]*")
_MAX_TEXT_RUN = 16 * 1024


def _keep_url(tag: str, attribute: str, value: str) -> str | None:
    """Links to the web, mail and phone; images inline (cid:, raster data:) or on the web."""
    if attribute not in ("href", "src", "cite"):
        return value
    url = _URL_NOISE.sub("", value).lower()
    if tag == "img" and attribute == "src":
        if _DATA_IMAGE.match(url):
            return value
        schemes = _IMAGE_SCHEMES
    else:
        schemes = _LINK_SCHEMES
    found = _SCHEME.match(url)
    # A relative URL means nothing in a mail and would resolve against the CSM's client.
    return value if found and found.group(1) in schemes else None


class _Nesting(HTMLParser):
    """Re-writes HTML well nested and at most _MAX_DEPTH elements deep; text is escaped."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.open: list[str] = []
        self.run = 0  # characters of text since the last tag

    def _start(self, tag: str, attrs: list[tuple[str, str | None]]) -> bool:
        if not _TAG_NAME.fullmatch(tag):
            return False
        if tag not in _VOID:
            if self.open and self.open[-1] in _SIBLINGS.get(tag, ()):
                self._close_top()  # "<li>a<li>b": the parser would close the first itself
            if len(self.open) >= _MAX_DEPTH:
                return False
            self.open.append(tag)
        written = "".join(f' {name}="{html.escape(value or "")}"' for name, value in attrs
                          if _TAG_NAME.fullmatch(name))
        self.out.append(f"<{tag}{written}>")
        self.run = 0
        return tag not in _VOID

    def _close_top(self) -> None:
        self.out.append(f"</{self.open.pop()}>")
        self.run = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._start(tag, attrs)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._start(tag, attrs):
            self._close_top()

    def handle_endtag(self, tag: str) -> None:
        if tag in self.open:  # at most _MAX_DEPTH to look at
            while self.open[-1] != tag:
                self._close_top()
            self._close_top()

    def handle_data(self, data: str) -> None:
        # html5ever slows down super-linearly on one huge text node full of "&"; an
        # invisible <wbr> now and then keeps every node short.
        start = 0
        while start < len(data):
            if self.run == _MAX_TEXT_RUN:
                self.out.append("<wbr>")
                self.run = 0
            end = start + _MAX_TEXT_RUN - self.run
            piece = data[start:end]
            self.out.append(html.escape(piece, quote=False))
            self.run += len(piece)
            start = end

    def result(self) -> str:
        while self.open:
            self._close_top()
        return "".join(self.out)


def safe_html(markup: str) -> str:
    """The customer's HTML as a balanced fragment with nothing active and no styling.

    Linear in the input: comments and stray "<" are defused first, nesting is bounded,
    then nh3 (ammonia) sanitises.
    """
    nesting = _Nesting()
    with contextlib.suppress(Exception):  # html.parser may assert on pathological markup
        nesting.feed(defuse_html(markup))
        nesting.close()
    return nh3.clean(
        nesting.result(),
        tags=_HTML_TAGS,
        clean_content_tags=_HTML_DROPPED_WITH_CONTENT,
        attributes=_HTML_ATTRIBUTES,
        attribute_filter=_keep_url,
        url_schemes=set(_LINK_SCHEMES | _IMAGE_SCHEMES | {"data"}),
        link_rel="noopener noreferrer",
        strip_comments=True,
    )
