"""Reading generated answers: which concept words they name, what steering added, fluency.

A word is a run of letters, lower-cased. An answer *gains* a word when the steered answer names
it and the unsteered answer to the same prompt and image does not. An answer *degenerates* when
some phrase of 1 to 3 words repeats ``REPEATS`` or more times in a row ("red red red red",
"the star the star the star").
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

REPEATS = 3
_FUNCTION_WORDS = (
    "a an the and or of to in on at for with by from is are was were be it its this that "
    "these those i you he she we they me my your our their his her as if so not no yes do does "
    "did have has had can will would should could what which who how there here all any some "
    "one two image picture"
)
STOPWORDS = frozenset(_FUNCTION_WORDS.split())
"""Function words (and the words every image prompt invites), never counted as concepts."""


_WORD = re.compile(r"[a-z]+")


def words(text: str) -> list[str]:
    """The lower-cased words of ``text``."""
    return _WORD.findall(text.lower())


def _says(said: Sequence[str], said_set: frozenset[str], target: Sequence[str]) -> bool:
    """Whether the words ``said`` contain the words ``target`` in a row (``said_set`` is
    ``said``'s set: most targets are one word, or have a word that was not said)."""
    if not target or not said_set.issuperset(target):
        return False
    n = len(target)
    return any(said[i : i + n] == target for i in range(len(said) - n + 1))


def mentions(text: str, phrase: str) -> bool:
    """Whether ``text`` names ``phrase`` (one or more words, matched whole, case-insensitive)."""
    said = words(text)
    return _says(said, frozenset(said), words(phrase))


class ConceptReader:
    """The concepts answers name, and what steering added, over many answers: the vocabulary's
    words split once, each distinct answer read once."""

    def __init__(self, vocabulary: Sequence[str] | None) -> None:
        self.entries = None if vocabulary is None else [(e, words(e)) for e in vocabulary]
        self.seen: dict[str, set[str]] = {}

    def named(self, text: str) -> set[str]:
        """The vocabulary entries ``text`` names; without a vocabulary, its words that are not
        ``STOPWORDS``."""
        if text not in self.seen:
            said = words(text)
            if self.entries is None:
                self.seen[text] = {w for w in said if w not in STOPWORDS}
            else:
                said_set = frozenset(said)
                self.seen[text] = {e for e, target in self.entries if _says(said, said_set, target)}
        return self.seen[text]

    def gained(self, steered: Sequence[str], unsteered: Sequence[str]) -> Counter[str]:
        """For each concept, the number of answer pairs in which steering added it."""
        counts: Counter[str] = Counter()
        for after, before in zip(steered, unsteered, strict=True):
            counts.update(self.named(after) - self.named(before))
        return counts


def gained(
    steered: Sequence[str], unsteered: Sequence[str], vocabulary: Sequence[str] | None = None
) -> Counter[str]:
    """For each concept, the number of answer pairs in which steering added it."""
    return ConceptReader(vocabulary).gained(steered, unsteered)


def degenerate(text: str) -> bool:
    """Whether a phrase of 1-3 words repeats ``REPEATS`` or more times in a row in ``text``."""
    said = words(text)
    for n in (1, 2, 3):
        for start in range(len(said) - n * REPEATS + 1):
            phrase = said[start : start + n]
            if all(said[start + r * n : start + (r + 1) * n] == phrase for r in range(REPEATS)):
                return True
    return False


def most_common_answer(answers: Iterable[str], exclude: Iterable[str] = ()) -> str | None:
    """The most frequent answer (normalised to its words) that is not among ``exclude``."""
    excluded = {" ".join(words(a)) for a in exclude}
    counts = Counter(" ".join(words(a)) for a in answers)
    for answer, _ in counts.most_common():
        if answer and answer not in excluded:
            return answer
    return None
