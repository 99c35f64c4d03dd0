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


def words(text: str) -> list[str]:
    """The lower-cased words of ``text``."""
    return re.findall(r"[a-z]+", text.lower())


def mentions(text: str, phrase: str) -> bool:
    """Whether ``text`` names ``phrase`` (one or more words, matched whole, case-insensitive)."""
    target = words(phrase)
    if not target:
        return False
    said = words(text)
    n = len(target)
    return any(said[i : i + n] == target for i in range(len(said) - n + 1))


def concepts_named(text: str, vocabulary: Sequence[str] | None) -> set[str]:
    """The vocabulary entries ``text`` names; without a vocabulary, its words that are not
    ``STOPWORDS``."""
    if vocabulary is None:
        return {w for w in words(text) if w not in STOPWORDS}
    return {entry for entry in vocabulary if mentions(text, entry)}


def gained(
    steered: Sequence[str], unsteered: Sequence[str], vocabulary: Sequence[str] | None = None
) -> Counter[str]:
    """For each concept, the number of answer pairs in which steering added it."""
    counts: Counter[str] = Counter()
    for after, before in zip(steered, unsteered, strict=True):
        counts.update(concepts_named(after, vocabulary) - concepts_named(before, vocabulary))
    return counts


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
