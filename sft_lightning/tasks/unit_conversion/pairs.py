"""Which unit pairs the generator asks, and how often: the table's units as the conventions read them,
every ordered pair of a family with a readable factor, weighted by how often people ask about its units,
plus composed rates (``rates.py``) in the speed family."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sft_lightning.tasks.unit_conversion import rates
from sft_lightning.tasks.unit_conversion.conventions import DEFAULT, Conventions, context_of, table_views
from sft_lightning.tasks.unit_conversion.units import FAMILIES, Unit, beside_forms, check_family, pair_factor, resolve_unit, unit

# Unit pairs whose factor lies outside this range are never asked (e.g. um -> mi), because almost
# no everyday quantity gives a readable answer.
MIN_PAIR_FACTOR: float = 1e-6
MAX_PAIR_FACTOR: float = 1e9
# Pair weight = product of its units' tier weights: everyday units are asked about most.
TIER_WEIGHT = {1: 1.0, 2: 0.5, 3: 0.15}
# Composed rates (in/s, cm/min, ft/d, ...) weigh this multiple of the table's speed pairs in all: ~2,800 pairs, each
# seen rarely, for the set-up (naming "miles per minute" mi/min), not the factor (the lookup's).
RATE_SHARE = 2.0


@dataclass(frozen=True)
class Pair:
    """An allowed (source, target) pair, its unit factor (None for offset units) and sampling weight.

    ``src``/``dst`` are the units as the conventions read them; ``src_beside``/``dst_beside`` the same units
    spelled as only the other unit makes clear (``G`` for GB), None where there is no such spelling.
    """

    src: Unit
    dst: Unit
    factor: float | None
    weight: float
    src_beside: Unit | None = None
    dst_beside: Unit | None = None


def select_units(
    families: Sequence[str] | None, units: Mapping[str, Sequence[str]] | None, conventions: Conventions = DEFAULT
) -> dict[str, list[Unit]]:
    """Validate families/units up front and return the units to use per family (FAMILIES order), as
    ``conventions`` read them (a unit no spelling means any more, such as MB under binary, is left out)."""
    if isinstance(families, str):
        families = (families,)
    requested = list(FAMILIES) if families is None else list(families)
    if not requested:
        raise ValueError(f"families must not be empty; choose from: {', '.join(FAMILIES)}")
    for fam in requested:
        check_family(fam)
    restriction: dict[str, list[str]] = {}
    for fam, names in (units or {}).items():
        check_family(fam)
        if isinstance(names, str):
            names = (names,)
        restriction[fam] = list(dict.fromkeys(resolve_unit(name, family=fam, conventions=conventions) for name in names))
    table = table_views(conventions)
    selected = {fam: [u for u in table if u.family == fam and (fam not in restriction or u.key in restriction[fam])]
                for fam in FAMILIES if fam in requested}
    for fam, keys in restriction.items():  # composed rates asked for by name ("in/s")
        if fam in selected:
            selected[fam] += [unit(key) for key in keys if key not in {u.key for u in table}]
    return selected


def with_rates(selected: Mapping[str, Sequence[Unit]], units: Mapping[str, Sequence[str]] | None) -> bool:
    """Composed rates are asked when speed is and its units are not restricted."""
    return "speed" in selected and "speed" not in (units or {})


def beside_view(u: Unit, other: Unit, conventions: Conventions) -> Unit | None:
    """``u`` spelled as only ``other`` beside it makes clear ("G" for GB beside MB, "ounces" for fl oz beside a
    quart); None when it has no such spelling there."""
    names, symbols = beside_forms(u.key, context_of(other), conventions)
    if not names and not symbols:
        return None
    return dataclasses.replace(u, names=names, symbols=symbols, informal=(), heldout=frozenset())


def allowed_pairs(
    selected: Mapping[str, Sequence[Unit]], conventions: Conventions = DEFAULT, add_rates: bool = False
) -> dict[str, list[Pair]]:
    """Unit pairs per family whose factor keeps answers readable; error if a family has none."""
    pairs: dict[str, list[Pair]] = {}
    for fam, fam_units in selected.items():
        fam_pairs = family_pairs(fam_units, conventions)
        if fam == "speed" and add_rates:
            fam_pairs += rate_pairs(fam_units, sum(p.weight for p in fam_pairs), conventions)
        if not fam_pairs:
            names = ", ".join(u.key for u in fam_units) or "(none)"
            raise ValueError(
                f"family {fam!r} has no usable unit pair with units [{names}]: need at least two units "
                f"whose conversion factor lies within [{MIN_PAIR_FACTOR:g}, {MAX_PAIR_FACTOR:g}]"
            )
        pairs[fam] = fam_pairs
    return pairs


def family_pairs(fam_units: Sequence[Unit], conventions: Conventions, weight: float | None = None) -> list[Pair]:
    """Every ordered pair of ``fam_units`` with a readable factor, weighted by tier unless ``weight`` is given."""
    out: list[Pair] = []
    for src in fam_units:
        for dst in fam_units:
            if src.key == dst.key:
                continue
            factor = None if src.family == "temperature" else pair_factor(src.key, dst.key)
            if factor is not None and not MIN_PAIR_FACTOR <= factor <= MAX_PAIR_FACTOR:
                continue
            w = TIER_WEIGHT[src.tier] * TIER_WEIGHT[dst.tier] if weight is None else weight
            out.append(Pair(src, dst, factor, w, beside_view(src, dst, conventions), beside_view(dst, src, conventions)))
    return out


def rate_pairs(speeds: Sequence[Unit], table_weight: float, conventions: Conventions) -> list[Pair]:
    """Pairs with a composed rate (in/s to m/s, cm/min to ft/h), weighing ``RATE_SHARE`` of ``table_weight`` in all."""
    composed = {u.key for u in rates.generated()}
    pairs = [p for p in family_pairs([*speeds, *rates.generated()], conventions, weight=1.0)
             if p.src.key in composed or p.dst.key in composed]
    each = RATE_SHARE * table_weight / max(len(pairs), 1)
    return [dataclasses.replace(p, weight=each) for p in pairs]
