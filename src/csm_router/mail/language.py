"""Which language a customer writes in: an offline detector (lingua) over the languages the
pool reads (`ROUTER_LANGUAGES`) and English, loaded once a process needs it."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lingua import LanguageDetector

# Below this share of the text's likelihood, no language is named: a line or two of "Thanks"
# is no evidence, and a wrong guess would narrow the round robin for nothing.
MIN_CONFIDENCE = 0.6
SAMPLE_CHARS = 2000  # the first few paragraphs decide; the rest only costs time


class Detector:
    """Names the language of a text among `codes` (English always among them)."""

    def __init__(self, codes: frozenset[str]) -> None:
        self.codes = frozenset(codes) | {"en"}
        self._detector: LanguageDetector | None = None
        self._lock = threading.Lock()

    def _built(self) -> LanguageDetector:
        with self._lock:
            if self._detector is None:
                from lingua import IsoCode639_1, LanguageDetectorBuilder

                isos = [IsoCode639_1.from_str(code) for code in sorted(self.codes)]
                # Models are loaded now, at start, not on the first customer's mail.
                self._detector = (LanguageDetectorBuilder.from_iso_codes_639_1(*isos)
                                  .with_preloaded_language_models().build())
            return self._detector

    def load(self) -> None:
        """Load the language models now (a few seconds), so no mail waits for them."""
        self._built()

    def detect(self, text: str) -> str | None:
        """The ISO 639-1 code of `text`'s language, or None when the text says too little."""
        sample = text.strip()[:SAMPLE_CHARS]
        if not sample:
            return None
        best = self._built().compute_language_confidence_values(sample)[0]
        if best.value < MIN_CONFIDENCE:
            return None
        return str(best.language.iso_code_639_1.name.lower())
