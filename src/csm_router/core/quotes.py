"""Reply bodies: HTML to quote-marked text, and the fresh text split from the quoted."""

# ruff: noqa: RUF001, RUF003 - localized quote headers are meant to hold Cyrillic letters

import contextlib
import re
from html.parser import HTMLParser

__all__ = ["defuse_html", "html_to_text", "split_reply"]

# Attribution and header lines are short. Longer lines only get the cheap ">" test, so one
# pass over the lines stays linear however pathological the body is.
_MAX_LINE = 400
_WINDOW = 3  # Gmail & co. wrap "On <date>, <name> <addr> wrote:" over up to three lines

_NEWLINE = re.compile(r"\r\n|\r|\n")
_WHITESPACE = re.compile(r"\s+")
_DIGIT = re.compile(r"\d")
_WRAPPED_TAIL = re.compile(r">\s*:")  # Gmail wrapping "<addr>:" right before the ">"

_START_WORD = re.compile(
    r"-*+\s*+(?:on|le|am|el|il|em|op|den|på|in data|w dniu|dnia|dne)\s", re.IGNORECASE
)
_START_DATE = re.compile(r"-*+\s*+\S{0,12}\s*\d")  # "2017-11-24 ...", "ср, 30 апр.", "pe 20."
_VERB_AT_END = re.compile(
    r"(?:\bwrote|\ba écrit|\bescribió|\bha scritto|\bescreveu|\bnapisał(?:\(a\))?"
    r"|\bkirjoitti|\bírta|\bнаписала?|\bskrev|\bnapsal(?:a|\(a\))?)\s*:?\s*-*$",
    re.IGNORECASE,
)
# Chinese and Japanese clients end the line with the verb, name first: "Dana <d@x> 于2026年
# 3月3日周二 09:30写道：", Apple Mail's "2026/03/03 9:30、Dana <d@x>のメール:".
_CJK_VERB_AT_END = re.compile(r"(?:写道|寫道|のメール|のメッセージ)\s*[:：]\s*$")
_VERB_BEFORE_NAME = re.compile(r"\b(?:wrote|schrieb|schreef|skrev)\b", re.IGNORECASE)
_ADDRESS_AT_END = re.compile(r"<[^<>\s@]+@[^<>\s@]+\s*>\s*[:：]$")  # no "@" twice: no backtracking
_ORIGINAL = re.compile(
    r"-{2,}+\s*+(?:original message|ursprüngliche nachricht|message d['’]origine"
    r"|mensaje original|messaggio originale|mensagem original|oorspronkelijk bericht"
    r"|oprindelig besked|opprinnelig melding|ursprungligt meddelande|alkuperäinen viesti"
    r"|исходное сообщение|wiadomość oryginalna|oryginalna wiadomość)\s*-{2,}",
    re.IGNORECASE,
)
_FROM_LABEL = re.compile(
    r"[\s*]*+(?:from|de|von|van|da|fra|från|od|lähettäjä|от|feladó|差出人|送信者|发件人|發件人"
    r"|寄件者|寄件人)\s*[:：]",
    re.IGNORECASE,
)
_HEADER_LABEL = re.compile(
    r"[\s*]*+(?:sent|date|to|cc|subject|envoyé|à|objet|gesendet|datum|an|betreff|verzonden"
    r"|aan|onderwerp|inviato|oggetto|a|data|enviado|para|asunto|assunto|dato|til|emne"
    r"|skickat|till|ämne|lähetetty|vastaanottaja|aihe|wysłano|do|temat|отправлено|кому"
    r"|тема|дата|odesláno|komu|předmět|kopie|odesláno dne"
    r"|送信日時|送信日|日時|宛先|件名|発信日時|发送时间|發送時間|时间|收件人|收件者|主题|主旨|抄送"
    r"|副本|日期|寄件日期)(?:\s+(?:le|el))?\s*[:：]",
    re.IGNORECASE,
)
_SEPARATOR = re.compile(r"[_-]{8,}")


def split_reply(text: str) -> tuple[str, str]:
    """Return ``(fresh, quoted)``: the text before the first quote marker and the rest.

    Both parts are stripped. A bottom-posted reply (nothing before the first marker) keeps
    its unquoted lines after the marker as ``fresh``.
    """
    lines = _NEWLINE.split(text)
    found = _find_marker(lines)
    if found is None:
        return text.strip(), ""
    start, end = found
    fresh = "\n".join(lines[:start]).strip()
    if fresh:
        return fresh, "\n".join(lines[start:]).strip()
    tail = lines[end:]
    fresh = "\n".join(line for line in tail if not line.startswith(">")).strip()
    quoted = lines[start:end] + [line for line in tail if line.startswith(">")]
    return fresh, "\n".join(quoted).strip()


def _find_marker(lines: list[str]) -> tuple[int, int] | None:
    """First quote marker as the line range ``(start, end)`` it occupies, or None."""
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped:
            continue
        short = len(line) <= _MAX_LINE
        if short and (not line.startswith(">") or _WRAPPED_TAIL.fullmatch(stripped)):
            start = _attribution_start(lines, i)
            if start is not None:
                return start, i + 1
        if line.startswith(">"):
            return i, i + 1
        if not short:
            continue
        if _ORIGINAL.fullmatch(stripped):
            return i, i + 1
        end = _header_block_end(lines, i)
        if end is not None:
            return _separator_before(lines, i), end
    return None


def _attribution_start(lines: list[str], end: int) -> int | None:
    """Start of an "On <date>, <name> wrote:" line group ending at line ``end``."""
    windows: list[tuple[int, str]] = []
    parts: list[str] = []
    for first in range(end, max(end - _WINDOW, -1), -1):
        line = lines[first].strip()
        if not line or len(line) > _MAX_LINE or (first < end and line.startswith(">")):
            break
        parts.insert(0, line)
        joined = " ".join(parts)
        if _is_attribution(joined):
            windows.append((first, line))
    # Prefer a window opening with "On"/"Le"/...; a bare date opening is the fallback.
    for start_pattern in (_START_WORD, _START_DATE):
        for first, line in windows:
            if start_pattern.match(line):
                return first
    if windows and _CJK_VERB_AT_END.search(lines[end][-20:]):
        return end
    return None


def _is_attribution(text: str) -> bool:
    """Whether ``text`` ends like "<date> ... <name> wrote:" in one of the known forms."""
    if not _DIGIT.search(text):
        return False
    # Every form ends the text, so the regexes only need to look at its end.
    if _VERB_AT_END.search(text[-60:]) or _CJK_VERB_AT_END.search(text[-20:]):
        return True
    # "Am <date> schrieb <name> <addr>:" and "<date>, <name> <addr>:"
    return text.endswith((":", "：")) and bool(
        _ADDRESS_AT_END.search(text[-200:]) or _VERB_BEFORE_NAME.search(text[-300:])
    )


def _header_block_end(lines: list[str], i: int) -> int | None:
    """End of an Outlook "From:/Sent:/To:/Subject:" block (any order) starting at line ``i``."""
    labels, has_from = 0, False
    for line in lines[i : i + 1 + _WINDOW]:
        if not line.strip() or len(line) > _MAX_LINE:
            break
        is_from = bool(_FROM_LABEL.match(line))
        if labels == 0 and not (is_from or _HEADER_LABEL.match(line)):
            return None
        has_from = has_from or is_from
        labels += is_from or bool(_HEADER_LABEL.match(line))
    if labels < 2 or not has_from:
        return None
    end = i + 1
    while end < len(lines) and lines[end].strip():
        end += 1
    return end


def _separator_before(lines: list[str], i: int) -> int:
    """Include an underscore/dash rule (blank lines allowed) that precedes line ``i``."""
    j = i - 1
    while j >= 0 and i - j <= 3 and not lines[j].strip():
        j -= 1
    if j >= 0 and len(lines[j]) <= _MAX_LINE and _SEPARATOR.fullmatch(lines[j].strip()):
        return j
    return i


_DECLARATION = re.compile(r"<[!?][^<>]*>")  # <!DOCTYPE>, <![if mso]>, <?xml?>: never text
_STRAY_LT = re.compile(r"<(?![a-zA-Z/])|<(?=[^<>]*(?:<|\Z))")  # a "<" that opens no whole tag
_MAX_QUOTE_DEPTH = 16  # hostile nesting must not multiply the output size
_SKIP_TAGS = frozenset({"script", "style", "head", "title", "template"})
_BLOCK_TAGS = frozenset(
    {
        *("address", "article", "aside", "blockquote", "center", "dd", "div", "dl", "dt"),
        *("fieldset", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr"),
        *("li", "ol", "p", "pre", "section", "table", "tbody", "thead", "tfoot", "tr", "ul"),
    }
)


class _HtmlToText(HTMLParser):
    """Collects ``(blockquote depth, text)`` lines from HTML."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[tuple[int, str]] = []
        self._line: list[str] = []
        self._depth = 0
        self._pre = 0
        self._skip: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._skip is not None:
            if self._skip == "head" and tag == "body":  # an unclosed <head> ends at <body>
                self._skip = None
        elif tag in _SKIP_TAGS:
            self._skip = tag
        elif tag == "br":
            self.flush(force=True)
        elif tag in _BLOCK_TAGS:
            self.flush()
            self._depth += tag == "blockquote"
            self._pre += tag == "pre"
        elif tag in ("td", "th"):
            self._line.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if self._skip is not None:
            self._skip = None if tag == self._skip else self._skip
        elif tag in _BLOCK_TAGS:
            self.flush()
            if tag == "p":
                self.flush(force=True)  # a paragraph ends with a blank line
            self._depth = max(0, self._depth - (tag == "blockquote"))
            self._pre = max(0, self._pre - (tag == "pre"))

    def handle_data(self, data: str) -> None:
        if self._skip is not None:
            return
        if not self._pre:
            self._line.append(_WHITESPACE.sub(" ", data))
            return
        first, *rest = _NEWLINE.split(data)
        self._line.append(first)
        for line in rest:
            self.flush(force=True)
            self._line.append(line)

    def flush(self, force: bool = False) -> None:
        """End the current line; ``force`` keeps it even when blank."""
        text = "".join(self._line).strip()
        self._line = []
        if text or force:
            self.lines.append((self._depth, text))


def html_to_text(html: str) -> str:
    """Readable text from HTML: blocks become lines, blockquote lines are prefixed "> "."""
    parser = _HtmlToText()
    with contextlib.suppress(Exception):  # html.parser may assert on pathological markup
        parser.feed(defuse_html(html))
        parser.close()
    parser.flush()
    out: list[str] = []
    for depth, text in parser.lines:
        if text or (out and out[-1].strip("> ")):  # collapse runs of blank lines
            out.append(("> " * min(depth, _MAX_QUOTE_DEPTH) + text).rstrip())
    return "\n".join(out).strip()


def defuse_html(html: str) -> str:
    """Drop comments and declarations and escape stray "<", all in linear time.

    html.parser rescans to the end of the input for every unclosed construct, which is
    quadratic on hostile markup; after this every "<" opens a tag closed before the next "<".
    """
    kept: list[str] = []
    i = 0
    while (start := html.find("<!--", i)) >= 0 and (end := html.find("-->", start + 4)) >= 0:
        kept.append(html[i:start])
        i = end + 3
    kept.append(html[i:])
    return _STRAY_LT.sub("&lt;", _DECLARATION.sub("", "".join(kept)))
