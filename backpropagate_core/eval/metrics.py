"""How close an answer is to the reference: metrics people know, as pure functions.

Text is normalised the way SQuAD-style evaluation does (lower case, punctuation and
articles dropped, whitespace collapsed) before comparing tokens. `fact_recall` is ours:
the share of the reference's content words that the question did not already contain
and the answer does, so an answer that copies the dataset's wording but gets the name or
number wrong scores low.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from dataclasses import dataclass

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans({c: " " for c in string.punctuation})
STOPWORDS = frozenset(
    "a an the is are was were be been being am do does did of in on at to for from by with and or "
    "but it its it's this that these those i you he she we they me my your his her our their what "
    "which who whom whose when where why how as so if then than there here has have had not no yes "
    "called named name".split())
"""Words that carry no fact (plus "called/named/name", which phrase one)."""
LEARNED = 0.8
"""fact_recall at or above which an answer counts as giving the fact."""


def normalise(text: str) -> str:
    text = text.lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def tokens(text: str) -> list[str]:
    return normalise(text).split()


def exact_match(answer: str, reference: str) -> float:
    return float(normalise(answer) == normalise(reference))


def token_f1(answer: str, reference: str) -> float:
    a, r = tokens(answer), tokens(reference)
    if not a or not r:
        return float(a == r)
    common = sum((Counter(a) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(a), common / len(r)
    return 2 * precision * recall / (precision + recall)


def rouge_l(answer: str, reference: str) -> float:
    """ROUGE-L F-measure: from the longest common subsequence of the two token lists."""
    a, r = tokens(answer), tokens(reference)
    if not a or not r:
        return float(a == r)
    lcs = _lcs_length(a, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(a), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def _lcs_length(a: list[str], b: list[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def fact_words(reference: str, prompt: str = "") -> list[str]:
    """The reference's content words that the prompt does not already contain."""
    asked = set(tokens(prompt))
    words = [w for w in tokens(reference) if w not in STOPWORDS and w not in asked]
    return words or [w for w in tokens(reference) if w not in STOPWORDS] or tokens(reference)


def fact_recall(answer: str, reference: str, prompt: str = "") -> float:
    wanted = fact_words(reference, prompt)
    if not wanted:
        return 1.0
    said = set(tokens(answer))
    return sum(w in said for w in wanted) / len(wanted)


@dataclass
class Score:
    exact_match: float
    f1: float
    rouge_l: float
    fact_recall: float

    @property
    def learned(self) -> bool:
        return self.fact_recall >= LEARNED


def score(answer: str, reference: str, prompt: str = "") -> Score:
    return Score(exact_match(answer, reference), token_f1(answer, reference), rouge_l(answer, reference),
                 fact_recall(answer, reference, prompt))


def summarise(scores: list[Score]) -> dict[str, float]:
    """Means over the prompts, plus `answer_score`: the share that gave the fact."""
    if not scores:
        return {}
    n = len(scores)
    return {"answer_score": sum(s.learned for s in scores) / n,
            "exact_match": sum(s.exact_match for s in scores) / n,
            "f1": sum(s.f1 for s in scores) / n,
            "rouge_l": sum(s.rouge_l for s in scores) / n,
            "fact_recall": sum(s.fact_recall for s in scores) / n}
