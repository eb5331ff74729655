"""Deterministic unit-conversion question generator: the ``train``, ``val`` and ``val_unseen`` sets, drawn from the unit table.

A (quantity, source, target) triple is training's or validation's by a stable hash, whatever the seed (docs/data.md).
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import math
import random
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from sft_lightning.data.records import normalize_question
from sft_lightning.tasks.unit_conversion.conventions import DEFAULT, Conventions, context_of
from sft_lightning.tasks.unit_conversion.pairs import Pair, allowed_pairs, select_units, with_rates
from sft_lightning.tasks.unit_conversion.phrasings import HELDOUT, TRAIN, Template, casual, format_quantity, pick_spelling, say_quantity
from sft_lightning.tasks.unit_conversion.units import (
    FAMILIES,
    Unit,
    UnknownFamilyError,
    UnknownUnitError,
    accepted_spellings,
    convert,
    convert_keys,
    family_of,
    resolve_unit,
    units_of,
)
from sft_lightning.tasks.unit_conversion.worked import working

__all__ = [
    "DEFAULT",
    "FAMILIES",
    "TEMPLATES",
    "Conventions",
    "ConversionQuestion",
    "Splits",
    "Template",
    "UnknownFamilyError",
    "UnknownUnitError",
    "accepted_spellings",
    "convert",
    "family_of",
    "format_quantity",
    "generate_questions",
    "generate_splits",
    "normalize_question",
    "resolve_unit",
    "units_of",
]

TEMPLATES: tuple[Template, ...] = TRAIN

# Answers outside this range are hard to read and rarely asked; quantities are resampled.
# The temperature family is exempt (0 and negative values are legitimate).
MIN_ABS_ANSWER: float = 1e-3
MAX_ABS_ANSWER: float = 1e9
# Share of (quantity, source, target) triples reserved for validation, by a stable hash.
_VALIDATION_FRACTION: float = 0.2
# A family is drawn in proportion to its pairs' total weight, so that every pair of the same
# weight is seen about as often (volume has 206 pairs, speed 20), but never less often than
# this: temperature has only 6 pairs, and its two-step arithmetic still needs practice.
_MIN_FAMILY_SHARE = 0.06
# Share of the questions of a pair with a unit people write as only its neighbour makes clear
# ("2 G in MB", "6 quarts in ounces") that write it so, and of those whose two units both have
# such a spelling, the share that spells both so ("how many mb in 2 gb": read in the family both share).
_BESIDE_SHARE = 0.35
_BOTH_BESIDE_SHARE = 0.25


@dataclass(frozen=True)
class ConversionQuestion:
    """One question with its exact (unrounded) pint answer and its worked solution.

    ``worked_value`` is what ``working`` computes (the factor is rounded to 3 digits, so it can
    differ from ``answer`` by up to 0.5%); it is the number a worked training target states.
    """

    question: str
    answer: float
    family: str
    quantity: float
    source_unit: str
    target_unit: str
    working: str
    worked_value: float


class Splits(NamedTuple):
    train: list[ConversionQuestion]
    val: list[ConversionQuestion]
    val_unseen: list[ConversionQuestion]


# --------------------------------------------------------------------------- quantities

_ROUND_NUMBERS = (40, 50, 60, 75, 80, 100, 120, 150, 200, 250, 300, 400, 500, 750, 1000, 1500, 2000, 2500, 5000, 10000,
                  20000, 25000, 50000, 60000, 100000, 250000, 500000, 1000000, 2000000)
_QUARTERS = (0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.25, 3.75)


@functools.lru_cache(maxsize=1)
def _quantity_support() -> tuple[float, ...]:
    """Every quantity the generator can ask about (positive families), sorted.

    People convert small or round amounts: "How many meters are in 6 km?". Integers up to 999,
    round numbers up to 2 million, halves, tenths, quarters and hundredths below 5.
    """
    values = {float(k) for k in range(1, 1000)} | {float(k) for k in _ROUND_NUMBERS}
    values |= {k / 2 for k in range(1, 40, 2)} | {k / 10 for k in range(1, 100)} | set(_QUARTERS)
    values |= {k / 100 for k in range(1, 500) if k % 10}
    return tuple(sorted(values))


def _sample_quantity(rng: random.Random) -> float:
    """Mostly small integers; then larger and round numbers, halves, tenths and hundredths."""
    r = rng.random()
    if r < 0.04:  # one most often of all: "How many minutes are in a week?"
        return 1.0
    if r < 0.33:
        return float(rng.randint(1, 12))
    if r < 0.48:
        return float(rng.randint(13, 30))
    if r < 0.56:
        return float(rng.randint(31, 100))
    if r < 0.62:
        return float(rng.randint(101, 999))
    if r < 0.72:
        return float(rng.choice(_ROUND_NUMBERS))
    if r < 0.84:  # a half most often of all: "half a cup"
        return 0.5 if rng.random() < 0.2 else rng.randrange(1, 40, 2) / 2
    if r < 0.93:
        return rng.randint(1, 99) / 10
    if r < 0.97:
        return rng.choice(_QUARTERS)
    return rng.choice([k for k in range(1, 500) if k % 10]) / 100


# Readings people convert: (everyday range, body temperatures in tenths, wide range, notable readings)
_TEMPERATURE_READINGS: dict[str, tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, ...]]] = {
    "celsius": ((-30, 45), (350, 420), (-60, 300), (-40, -30, 0, 50, 60, 70, 80, 90, 100, 120, 150, 160, 180, 200, 220, 250)),
    "fahrenheit": ((-20, 110), (950, 1060), (-60, 550), (-40, -20, 0, 32, 212, 250, 300, 325, 350, 375, 400, 425, 450, 500)),
}


def _sample_temperature(rng: random.Random, unit_key: str) -> float:
    """Weather and body temperatures, ovens, freezing and boiling; lab kelvins."""
    r = rng.random()
    if unit_key == "kelvin":
        return float(rng.randint(200, 400)) if r < 0.8 else float(rng.randint(0, 1000))
    everyday, body, wide, notable = _TEMPERATURE_READINGS[unit_key]
    if r < 0.55:
        return float(rng.randint(*everyday))
    if r < 0.7:
        return rng.randint(*body) / 10
    if r < 0.85:
        return float(rng.randint(*wide))
    return float(rng.choice(notable))


def _answer_in_range(family: str, answer: float) -> bool:
    """Readable-magnitude rule; temperature is exempt."""
    if not math.isfinite(answer):
        return False
    return family == "temperature" or MIN_ABS_ANSWER <= abs(answer) <= MAX_ABS_ANSWER


# --------------------------------------------------------------------------- selection




def _pair_capacity(pair: Pair) -> int:
    """How many distinct quantities give an in-range answer for this pair (a lower bound for temperature)."""
    if pair.factor is None:
        return 1000
    support = _quantity_support()
    lo, hi = MIN_ABS_ANSWER / pair.factor, MAX_ABS_ANSWER / pair.factor
    return bisect.bisect_right(support, hi) - bisect.bisect_left(support, lo)


def _is_validation_triple(quantity: float, src: str, dst: str) -> bool:
    """Stable (seed- and process-independent) hash partition of triples."""
    digest = hashlib.blake2b(f"{quantity!r}|{src}|{dst}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < _VALIDATION_FRACTION


# --------------------------------------------------------------------------- drawing


def _spelled(rng: random.Random, pair: Pair, heldout: bool) -> tuple[Unit, Unit]:
    """The two units as the question will spell them: sometimes one as only its neighbour makes clear
    ("2 G in MB"), now and then both ("how many mb in 2 gb"); a unit with held-out spellings keeps them in val_unseen."""
    sides = [side for side, view, u in (("src", pair.src_beside, pair.src), ("dst", pair.dst_beside, pair.dst))
             if view is not None and not (heldout and u.heldout)]
    if not sides or rng.random() >= _BESIDE_SHARE:
        return pair.src, pair.dst
    shared = all(context_of(u) == u.family for u in (pair.src, pair.dst))  # "G" and "M" read as GB, MB, never GiB
    if len(sides) == 2 and shared and rng.random() < _BOTH_BESIDE_SHARE:
        return pair.src_beside, pair.dst_beside
    side = rng.choice(sides)
    return (pair.src_beside or pair.src, pair.dst) if side == "src" else (pair.src, pair.dst_beside or pair.dst)


def _render(rng: random.Random, template: Template, quantity: float, src: Unit, dst: Unit, heldout: bool) -> tuple[str, str]:
    """Fill a template (the source unit singular only when the quantity is exactly +-1); also the quantity as said."""
    singular = abs(quantity) == 1
    if "{q} {src}" in template.text:  # a quantity right before its unit can be a word: "a mile", "half a cup"
        q, src_spelling = say_quantity(rng, quantity, src, heldout, first=template.text.startswith("{q} {src}"))
    else:
        q, src_spelling = format_quantity(quantity, rng), pick_spelling(rng, src, singular=singular, heldout=heldout)
    text = template.text.format(
        q=q,
        units="unit" if singular else "units",
        src=src_spelling,
        src_name=pick_spelling(rng, src, singular=False, heldout=heldout),
        dst=pick_spelling(rng, dst, singular=False, heldout=heldout),
    ).lstrip()
    return casual(rng, text, first_is_word=not template.text.startswith("{")), q


def _copied(said: str) -> str | None:
    """The quantity as the set-up copies it from the question where digits alone would be harder to write right
    (``2,000,000``, ``2 million``: the calculator reads both); None where the set-up writes the plain number."""
    return said if _COPIED.fullmatch(said) else None


_COPIED = re.compile(r"\d{1,3}(,\d{3})+|\d+(\.\d+)? million")


def _question_stream(
    rng: random.Random, pairs: Mapping[str, Sequence[Pair]], heldout: bool, conventions: Conventions = DEFAULT
) -> Iterator[ConversionQuestion]:
    """Endless stream: family by its share, pair by weight, readable quantity, a template of the right set."""
    family_names = list(pairs)
    weights = {fam: [p.weight for p in fam_pairs] for fam, fam_pairs in pairs.items()}
    shares = _family_shares({fam: sum(w) for fam, w in weights.items()})
    templates = {fam: [t for t in (HELDOUT if heldout else TRAIN) if t.fits(fam)] for fam in pairs}
    while True:
        fam = rng.choices(family_names, shares)[0]
        pair = rng.choices(pairs[fam], weights[fam])[0]
        for _ in range(50):
            if fam == "temperature":
                quantity = _sample_temperature(rng, pair.src.key)
            else:
                quantity = _sample_quantity(rng)
            answer = convert_keys(quantity, pair.src.key, pair.dst.key)
            if _answer_in_range(fam, answer):
                break
        else:
            continue
        template = rng.choice(templates[fam])
        question, said = _render(rng, template, quantity, *_spelled(rng, pair, heldout), heldout)
        text, value = working(quantity, pair.src.key, pair.dst.key, conventions, said=_copied(said))
        yield ConversionQuestion(
            question=question,
            answer=answer,
            family=fam,
            quantity=quantity,
            source_unit=pair.src.key,
            target_unit=pair.dst.key,
            working=text,
            worked_value=value,
        )


def _family_shares(totals: Mapping[str, float]) -> list[float]:
    """Each family's share of the questions: its pairs' total weight, floored at ``_MIN_FAMILY_SHARE``."""
    floor = min(_MIN_FAMILY_SHARE, 1.0 / len(totals))
    shares = {fam: total / sum(totals.values()) for fam, total in totals.items()}
    low = {fam for fam, share in shares.items() if share < floor}
    rest = sum(share for fam, share in shares.items() if fam not in low)
    scale = (1.0 - floor * len(low)) / rest if rest else 0.0
    return [floor if fam in low else share * scale for fam, share in shares.items()]


def _prepare(
    n: int, families: Sequence[str] | None, units: Mapping[str, Sequence[str]] | None, conventions: Conventions = DEFAULT
) -> dict[str, list[Pair]]:
    """Validate everything and check capacity before any question is drawn."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"number of questions must be a non-negative int, got {n!r}")
    selected = select_units(families, units, conventions)
    pairs = allowed_pairs(selected, conventions, add_rates=with_rates(selected, units))
    capacity = sum(_pair_capacity(p) for fam_pairs in pairs.values() for p in fam_pairs)
    if n > capacity:
        raise ValueError(
            f"cannot generate {n} unique questions: only {capacity} distinct (quantity, source, target) "
            f"combinations exist for families {list(pairs)}; widen families/units or ask for fewer"
        )
    return pairs


def _max_draws(n: int) -> int:
    """Give up (with a clear error) instead of looping forever near capacity."""
    return 60 * n + 10_000


class _Collector:
    """Keeps questions unique by normalised text and, for validation sets, by (quantity, source, target).

    Training may ask for the same conversion again in other words (a family with few distinct
    conversions, temperature, would otherwise run dry and be under-represented); validation never
    repeats one, so each of its questions is a separate measurement.
    """

    def __init__(self) -> None:
        self.triples: set[tuple[float, str, str]] = set()
        self.texts: set[str] = set()

    def take(self, q: ConversionQuestion, unique_triple: bool = True) -> bool:
        triple, text = (q.quantity, q.source_unit, q.target_unit), normalize_question(q.question)
        if text in self.texts or (unique_triple and triple in self.triples):
            return False
        self.triples.add(triple)
        self.texts.add(text)
        return True


def generate_questions(
    n: int,
    seed: int,
    families: Sequence[str] | None = None,
    units: Mapping[str, Sequence[str]] | None = None,
    conventions: Conventions = DEFAULT,
) -> list[ConversionQuestion]:
    """``n`` unique questions (distinct text and distinct (quantity, src, dst)), deterministic in ``seed``."""
    pairs = _prepare(n, families, units, conventions)
    stream = _question_stream(random.Random(seed), pairs, heldout=False, conventions=conventions)
    seen = _Collector()
    out: list[ConversionQuestion] = []
    for _ in range(_max_draws(n)):
        if len(out) >= n:
            break
        q = next(stream)
        if seen.take(q):
            out.append(q)
    if len(out) < n:
        raise ValueError(f"could only generate {len(out)} of {n} unique questions; widen families/units")
    return out


def generate_splits(
    n_train: int,
    n_val: int,
    seed: int,
    families: Sequence[str] | None = None,
    units: Mapping[str, Sequence[str]] | None = None,
    n_unseen: int = 0,
    conventions: Conventions = DEFAULT,
) -> Splits:
    """Training, validation and unseen-phrasing validation sets, pairwise disjoint by text and by triple.

    ``val`` is phrased like training; ``val_unseen`` only with held-out templates and (where a
    unit has them) held-out spellings, never seen in training. Validation questions are distinct
    conversions; training questions are distinct texts (a conversion may come back phrased
    otherwise, see ``_Collector``).
    """
    for name, value in (("n_train", n_train), ("n_val", n_val), ("n_unseen", n_unseen)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    pairs = _prepare(n_train + n_val + n_unseen, families, units, conventions)
    rng = random.Random(seed)
    seen = _Collector()
    train: list[ConversionQuestion] = []
    val: list[ConversionQuestion] = []
    stream = _question_stream(rng, pairs, heldout=False, conventions=conventions)
    # Validation triples are ~20% of draws, so allow proportionally more draws for them.
    budget = _max_draws(n_train) + _max_draws(n_val) * int(1 / _VALIDATION_FRACTION)
    for _ in range(budget):
        if len(train) >= n_train and len(val) >= n_val:
            break
        q = next(stream)
        validation = _is_validation_triple(q.quantity, q.source_unit, q.target_unit)
        target, limit = (val, n_val) if validation else (train, n_train)
        if len(target) < limit and seen.take(q, unique_triple=validation):
            target.append(q)
    unseen: list[ConversionQuestion] = []
    unseen_stream = _question_stream(random.Random(f"{seed}-unseen"), pairs, heldout=True, conventions=conventions)
    for _ in range(_max_draws(n_unseen) * int(1 / _VALIDATION_FRACTION)):
        if len(unseen) >= n_unseen:
            break
        q = next(unseen_stream)
        if _is_validation_triple(q.quantity, q.source_unit, q.target_unit) and seen.take(q):
            unseen.append(q)
    if len(train) < n_train or len(val) < n_val or len(unseen) < n_unseen:
        raise ValueError(
            f"could only generate {len(train)}/{n_train} train, {len(val)}/{n_val} validation and "
            f"{len(unseen)}/{n_unseen} unseen-phrasing questions (validation holds ~{_VALIDATION_FRACTION:.0%} of all "
            "combinations); widen families/units or ask for fewer"
        )
    return Splits(train, val, unseen)
