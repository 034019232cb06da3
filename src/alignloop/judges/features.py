"""Features of a story continuation that the judges of the built-in task look at.

Each feature is a pure function of the text (and, for character consistency, of
the prompt) with a documented range. `feature_scores` turns them into
"goodness" values in [0, 1] (higher is better) that the gold judge and the
simulated annotators weigh; it is cached because annotators judge the same
response many times.

The word lists (kind and unkind acts, closing lines, names, the generator's
ordinary words) come from `alignloop.data.stories`, so the generator and the
judges agree on what a kind act, a name and an ending are.
"""

from __future__ import annotations

import functools
import re
from collections import Counter

from alignloop.data.stories import (
    CLOSING_MARKERS,
    COMMON_WORDS,
    KIND_WORDS,
    NAMES,
    NEGATIONS,
    UNKIND_WORDS,
)

FEATURE_NAMES = ("kindness", "character", "no_repetition", "ending", "length", "grammar")

_WORD = re.compile(r"[A-Za-z']+")
# A sentence ends at . ! ? (maybe followed by a closing quote) and whitespace.
_SENTENCE_BREAK = re.compile(r'(?<=[.!?])\s+|(?<=[.!?]["\u201d])\s+')
_ENDS_SENTENCE = re.compile(r'[.!?]["\u201d]?$')

# Capitalised words that are not names, beyond the generator's own vocabulary
# (prompts may come from elsewhere, e.g. TinyStories openings).
_NOT_NAMES = frozenset(
    "once upon one day the a an and but so then when while after before every some all there "
    "here this that these those mom dad mommy daddy mama papa grandma grandpa granny mr mrs ms "
    "miss sir god yes no oh hi hello please thank thanks okay ok wow look let lets what why how "
    "who where which today tomorrow yesterday monday tuesday wednesday thursday friday saturday "
    "sunday christmas i me my we us our you your it its they them their he she his her him "
    "suddenly soon later finally at in on by with from to of for as if not mum mummy momma "
    "mommy baby everyday everytime everything everyone whenever although imagine unfortunately "
    "people kids lots man woman true each many".split()
) | COMMON_WORDS

_VADER = None


def _vader():
    """The VADER analyser, built once (it loads its lexicon from disk)."""
    global _VADER
    if _VADER is None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        _VADER = SentimentIntensityAnalyzer()
    return _VADER


def words(text: str) -> list[str]:
    """The words of `text` (letters and apostrophes), in order, case kept."""
    return _WORD.findall(text)


def sentences(text: str) -> list[str]:
    """`text` split after sentence-final punctuation (a closing quote stays with its sentence)."""
    return [s for s in (p.strip() for p in _SENTENCE_BREAK.split(text.strip())) if s]


def _is_name(word: str) -> bool:
    if word.endswith("'s"):
        word = word[:-2]
    if word in NAMES:
        return True
    return (
        len(word) > 1 and word.isalpha() and word[0].isupper() and word[1:].islower()
        and word.lower() not in _NOT_NAMES
    )


def names(text: str) -> list[str]:
    """Character names mentioned in `text`, in order, possessive "'s" removed."""
    return [w[:-2] if w.endswith("'s") else w for w in words(text) if _is_name(w)]


def main_character(prompt: str) -> str | None:
    """The prompt's main character: the first name it mentions, or None when it names nobody."""
    found = names(prompt)
    return found[0] if found else None


def kindness(text: str) -> float:
    """Kindness and positivity in [-1, 1]: half VADER, half the kind/unkind act lexicon.

    VADER (Hutto & Gilbert 2014) compound scores are averaged over sentences,
    because on a whole story the compound score saturates near +-1. The lexicon
    part is (k - u) / (k + u + 2), counting KIND_WORDS and UNKIND_WORDS, with a
    word flipped when one of the three words before it is a negation ("did not
    help" counts as unkind).
    """
    parts = sentences(text)
    if not parts:
        return 0.0
    analyser = _vader()
    sentiment = sum(analyser.polarity_scores(s)["compound"] for s in parts) / len(parts)
    lowered = [w.lower() for w in words(text)]
    kind = unkind = 0
    for i, word in enumerate(lowered):
        sign = 1 if word in KIND_WORDS else (-1 if word in UNKIND_WORDS else 0)
        if sign and any(w in NEGATIONS for w in lowered[max(0, i - 3) : i]):
            sign = -sign
        kind += sign > 0
        unkind += sign < 0
    lexicon = (kind - unkind) / (kind + unkind + 2)
    return 0.5 * sentiment + 0.5 * lexicon


def _dominance(main_count: int, other_count: int) -> float:
    """1 while the main character is mentioned at least as often as any newcomer, less as one takes over."""
    if other_count == 0:
        return 1.0
    return min(1.0, main_count / other_count)


def character_consistency(prompt: str, response: str) -> float:
    """Whether the response stays with the prompt's main character, in [0, 1].

    0.2 for naming the main character at all, 0.3 for it not being outnumbered
    by a new name over the whole response, 0.5 for the same over the second half
    (a story that drifts to someone else ends about them). A new name is one the
    prompt does not contain. A response that names nobody scores 0.6: it may
    stay with the character through pronouns, but does not show it. A prompt
    that names nobody has nothing to stay with: 1.0.
    """
    main = main_character(prompt)
    if main is None:
        return 1.0
    in_prompt = set(names(prompt))
    mentioned = names(response)
    if not mentioned:
        return 0.6
    tokens = words(response)
    second = names(" ".join(tokens[len(tokens) // 2 :]))

    def counts(found: list[str]) -> tuple[int, int]:
        others = Counter(n for n in found if n not in in_prompt)
        return found.count(main), max(others.values(), default=0)

    m_all, o_all = counts(mentioned)
    m_late, o_late = counts(second)
    late = _dominance(m_late, o_late) if (m_late or o_late) else _dominance(m_all, o_all)
    return 0.2 * (m_all > 0) + 0.3 * _dominance(m_all, o_all) + 0.5 * late


def repetition(text: str) -> float:
    """Share of word 3-grams that repeat an earlier one, in [0, 1) (0 = no repeats).

    (number of 3-grams - number of distinct 3-grams) / number of 3-grams;
    0 for texts under three words.
    """
    lowered = [w.lower() for w in words(text)]
    grams = list(zip(lowered, lowered[1:], lowered[2:]))
    if not grams:
        return 0.0
    return (len(grams) - len(set(grams))) / len(grams)


def proper_ending(text: str) -> float:
    """1 for a finished sentence that closes the story, 0.5 for a finished sentence only, else 0.

    A closing line is one of the last two sentences containing a closing marker
    ("The end.", "From that day on", "happily ever after", ...).
    """
    stripped = text.strip()
    if not stripped or not _ENDS_SENTENCE.search(stripped):
        return 0.0
    last = " ".join(sentences(stripped)[-2:]).lower()
    return 1.0 if any(marker in last for marker in CLOSING_MARKERS) else 0.5


def length_score(text: str) -> float:
    """Length in [0, 1]: 0 under 5 words, rising to 1 at 40, easing to 0.5 past 300.

    A response that stops mid-sentence (a generation cut by the token limit)
    keeps only 0.8 of its score.
    """
    n = len(words(text))
    if n < 5:
        return 0.0
    score = min(1.0, (n - 5) / 35)
    if n > 300:
        score *= max(0.5, 1.0 - (n - 300) / 600)
    if not _ENDS_SENTENCE.search(text.strip()):
        score *= 0.8
    return score


def grammar(text: str) -> float:
    """Cheap well-formedness in [0, 1]: capitalised sentence starts, no doubled words, balanced quotes.

    0.5 x share of sentences starting with a capital (a dialogue tag after a
    quote, as in '"Hi!" said Tom.', may start lower-case), 0.3 x (1 - 10 x rate
    of doubled adjacent words within a sentence, floored at 0), 0.2 x (1 if double quotes are
    balanced else 0.5).
    """
    parts = sentences(text)
    tokens = [w.lower() for w in words(text)]
    if not parts or not tokens:
        return 0.0
    capitalised = 0
    for i, sentence in enumerate(parts):
        first = next((c for c in sentence if c.isalpha()), "")
        after_quote = i > 0 and parts[i - 1].endswith(('"', "\u201d"))
        capitalised += first.isupper() or (after_quote and first.islower())
    # Only within a sentence: "named Max. Max was" is fine.
    doubled = 0
    for sentence in parts:
        lowered = [w.lower() for w in words(sentence)]
        doubled += sum(a == b for a, b in zip(lowered, lowered[1:]))
    doubled /= max(1, len(tokens) - 1)
    quotes = 1.0 if text.count('"') % 2 == 0 else 0.5
    return 0.5 * capitalised / len(parts) + 0.3 * max(0.0, 1.0 - 10.0 * doubled) + 0.2 * quotes


# Words a response needs before it earns full credit for kindness, character and variety.
SUBSTANCE_WORDS = 20


@functools.lru_cache(maxsize=65536)
def _scores(prompt: str, response: str) -> tuple[float, ...]:
    # Without this, "ran ran ran" would look neutral, on character and unrepeated,
    # and beat a fluent story that is merely unkind.
    substance = min(1.0, len(words(response)) / SUBSTANCE_WORDS)
    return (
        substance * min(1.0, max(0.0, 0.5 + kindness(response))),
        substance * character_consistency(prompt, response),
        substance * (1.0 - min(1.0, 2.0 * repetition(response))),
        proper_ending(response),
        length_score(response),
        grammar(response),
    )


def feature_scores(prompt: str, response: str) -> dict[str, float]:
    """Every feature as a goodness in [0, 1], higher is better, keyed by FEATURE_NAMES.

    kindness k in [-1, 1] becomes clip(0.5 + k, 0, 1): stories with kind acts
    and a happy turn score k of about 0.4 to 0.5 and unkind ones about -0.4, so
    they land near 1 and near 0; no_repetition is
    1 - min(1, 2 x repetition), so a text repeating half its 3-grams gets 0.
    kindness, character and no_repetition are scaled by
    min(1, words / SUBSTANCE_WORDS): a response too short to tell a story gets
    little credit for them.
    """
    return dict(zip(FEATURE_NAMES, _scores(prompt, response)))
