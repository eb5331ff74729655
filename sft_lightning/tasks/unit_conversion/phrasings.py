"""How people ask: question templates, unit spellings and casual surface forms.

``TRAIN`` templates phrase training questions, ``HELDOUT`` ones only ``val_unseen``, to tell the task learnt from our strings.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from sft_lightning.tasks.unit_conversion.units import Unit


@dataclass(frozen=True)
class Template:
    """A phrasing. ``{q}``: the quantity; ``{src}``: the source unit after it (singular only for exactly 1);
    ``{src_name}``: the source unit alone ("from kg to g"); ``{dst}``: the target unit; ``{units}``: the word "units".
    ``counting`` templates ("how many {dst}") skip temperature, a reading rather than a count; ``families`` restricts
    a template that sets a scene ("My suitcase weighs ...") to the families it fits.
    """

    text: str
    counting: bool = False
    families: tuple[str, ...] | None = None

    def fits(self, family: str) -> bool:
        if self.families is not None:
            return family in self.families
        return not (self.counting and family == "temperature")


def _t(text: str, counting: bool = False) -> Template:
    return Template(text, counting)


def _scene(families: str, *texts: str) -> list[Template]:
    return [Template(text, False, tuple(families.split())) for text in texts]


TRAIN: tuple[Template, ...] = (
    _t("Convert {q} {src} to {dst}."),
    _t("How many {dst} are in {q} {src}?", counting=True),
    _t("What is the conversion of {q} {src} to {dst}?"),
    _t("Express {q} {src} in {dst}."),
    _t("What is {q} {src} in {dst}?"),
    _t("{q} {src} equals how many {dst}?", counting=True),
    _t("Change {q} {src} into {dst}."),
    _t("If I have {q} {src}, how many {dst} is that?", counting=True),
    _t("How much is {q} {src} in {dst}?"),
    _t("Please convert {q} {src} into {dst}."),
    _t("What do you get when you convert {q} {src} to {dst}?"),
    _t("{q} {src} is how many {dst}?", counting=True),
    _t("Give {q} {src} in {dst}."),
    _t("What is the equivalent of {q} {src} in {dst}?"),
    _t("Turn {q} {src} into {dst}."),
    _t("{q} {src} = ? {dst}"),
    _t("{q} {src} to {dst}"),
    _t("{q} {src} in {dst}?"),
    _t("how many {dst} in {q} {src}", counting=True),
    _t("How many {dst} is {q} {src}?", counting=True),
    _t("What's {q} {src} in {dst}?"),
    _t("Can you convert {q} {src} to {dst}?"),
    _t("I need {q} {src} in {dst}."),
    _t("{q} {src} converted to {dst} is?"),
    _t("How many {dst} make up {q} {src}?", counting=True),
    _t("Convert from {src_name} to {dst}: {q} {src}."),
    _t("What is the conversion from {src_name} to {dst} for {q} {src}?"),
    _t("What is the conversion from {src_name} to {dst} for {q} {units}?"),
    _t("{src_name} to {dst}: {q}"),
    _t("{src_name} to {dst} for {q}?"),
    _t("Convert {src_name} to {dst} for {q} {units}."),
    _t("From {src_name} to {dst}, how much is {q} {src}?"),
    _t("How do I convert {q} {src} to {dst}?"),
    _t("Could you tell me how many {dst} are in {q} {src}?", counting=True),
    _t("Quick question: {q} {src} in {dst}?"),
    _t("Convert this to {dst}: {q} {src}."),
    _t("I have {q} {src}. What is that in {dst}?"),
    _t("What would {q} {src} be in {dst}?"),
    _t("{q} {src} -> {dst}"),
    _t("Find the number of {dst} in {q} {src}.", counting=True),
    _t("Work out {q} {src} in {dst}."),
    _t("Calculate {q} {src} in {dst}."),
    _t("What is {q} {src} expressed in {dst}?"),
    _t("{q} {src} makes how many {dst}?", counting=True),
    _t("How many {dst} does {q} {src} equal?", counting=True),
    _t("{src_name} to {dst}, {q} {src}?"),
    *_scene("length", "A rope is {q} {src} long. How long is it in {dst}?",
            "I ran {q} {src} today. How far is that in {dst}?", "The distance is {q} {src}; what is that in {dst}?"),
    *_scene("mass", "My suitcase weighs {q} {src}. How much is that in {dst}?",
            "A parcel weighs {q} {src}; what is its weight in {dst}?", "The recipe calls for {q} {src} of flour. How many {dst} is that?"),
    *_scene("time", "The trip took {q} {src}. How many {dst} is that?", "A movie lasts {q} {src}; what is that in {dst}?",
            "The warranty lasts {q} {src}. How long is that in {dst}?"),
    *_scene("volume", "The recipe needs {q} {src} of milk. How many {dst} is that?",
            "A tank holds {q} {src}. What is its capacity in {dst}?", "I drank {q} {src} of water; how much is that in {dst}?"),
    *_scene("speed", "The car is going {q} {src}. What is that speed in {dst}?",
            "The wind speed is {q} {src}; convert it to {dst}.", "A runner averages {q} {src}. How fast is that in {dst}?"),
    *_scene("data", "The file is {q} {src}. How many {dst} is that?",
            "My phone has {q} {src} of storage; what is that in {dst}?", "The download is {q} {src}. Express it in {dst}."),
    *_scene("area", "The garden is {q} {src}. How many {dst} is that?",
            "A farm covers {q} {src}; what is its area in {dst}?", "The apartment has {q} {src} of floor space. What is that in {dst}?"),
    *_scene("temperature", "It is {q} {src} outside. What is that in {dst}?",
            "The oven is set to {q} {src}; what is that in {dst}?", "The water is at {q} {src}. Convert it to {dst}."),
    *_scene("energy", "The battery stores {q} {src}. What is that in {dst}?",
            "A heater uses {q} {src}; how much is that in {dst}?", "The reaction released {q} {src}. Express it in {dst}."),
    *_scene("pressure", "The tire pressure is {q} {src}. What is that in {dst}?",
            "Air pressure today is {q} {src}; convert it to {dst}.", "The tank is pressurised to {q} {src}. How much is that in {dst}?"),
)

HELDOUT: tuple[Template, ...] = (
    _t("What is the value of {q} {src} when expressed in {dst}?"),
    _t("Tell me {q} {src} in {dst}, please."),
    _t("{q} {src}: how many {dst} is that?", counting=True),
    _t("Could you convert {src_name} to {dst} for {q} {units}?"),
    _t("Please work out how many {dst} there are in {q} {src}.", counting=True),
    _t("Need {q} {src} converted into {dst}."),
    _t("What does {q} {src} come to in {dst}?"),
    _t("In {dst}, what is {q} {src}?"),
    *_scene("length mass volume data area", "Someone gave me {q} {src}. What is it in {dst}?"),
    *_scene("time speed temperature energy pressure", "The reading says {q} {src}. What would it say in {dst}?"),
)


def pick_spelling(rng: random.Random, unit: Unit, singular: bool, heldout: bool) -> str:
    """A way to write ``unit``: a word (singular or plural as the number demands) or a symbol.

    ``heldout=False`` never returns a held-out spelling; ``heldout=True`` returns one when the
    unit has one of the right number, else any other spelling. Words and symbols are equally
    likely, and a word is sometimes capitalised or lower-cased, as people type.
    """
    words = [pair[0] if singular else pair[1] for pair in unit.names]
    symbols = [*unit.symbols, *unit.informal]
    if heldout:
        held = [form for form in (*words, *symbols) if form in unit.heldout]
        if held:
            return rng.choice(held)
    words = [w for w in dict.fromkeys(words) if w not in unit.heldout]
    symbols = [s for s in symbols if s not in unit.heldout]
    if symbols and (not words or rng.random() < 0.5):
        return rng.choice(symbols)
    word = rng.choice(words)
    roll = rng.random()
    if roll < 0.1:
        return word.title() if word.islower() else word
    if roll < 0.25:
        return word.lower()
    return word


def format_quantity(quantity: float, rng: random.Random | None = None) -> str:
    """A quantity as a person writes it: 5, 2.5, 12.75, -40, and sometimes 1,500 with a separator or 2 million."""
    if float(quantity).is_integer():
        text = str(int(quantity))
        if rng is not None and abs(quantity) >= 1000 and rng.random() < 0.5:
            millions = quantity / 1e6
            text = f"{millions:g} million" if millions >= 1 and rng.random() < 0.3 else f"{int(quantity):,}"
        return text
    return repr(float(quantity))


_NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine", 10: "ten"}


def say_quantity(rng: random.Random, quantity: float, unit: Unit, heldout: bool, first: bool = False) -> tuple[str, str]:
    """The quantity and the unit's spelling as written together: digits, or, before a unit spelled as a word,
    sometimes "a"/"an"/"one" for 1 ("How many feet are in a mile?"), "half a" for 0.5 ("half a cup") and a word
    for 2 to 10 ("three cups"); where they start the question, 1 is sometimes left unsaid ("pint in ml")."""
    half = quantity == 0.5 and rng.random() < 0.35
    spelling = pick_spelling(rng, unit, singular=abs(quantity) == 1 or half, heldout=heldout)
    is_word = spelling not in unit.symbols and spelling not in unit.informal
    article = "an" if spelling[:1].lower() in "aeio" or spelling.lower().startswith("hour") else "a"
    if half:
        return (f"half {article}" if is_word else "0.5"), (spelling if is_word else pick_spelling(rng, unit, False, heldout))
    digits = format_quantity(quantity, rng)
    roll = rng.random()
    if quantity == 1 and first and roll < 0.12:
        return "", spelling
    if not is_word:
        return digits, spelling
    if quantity == 1 and roll < 0.5:
        return ("one" if roll < 0.1 else article), spelling
    if quantity in _NUMBER_WORDS and roll < 0.1:
        return _NUMBER_WORDS[int(quantity)], spelling
    return digits, spelling


def casual(rng: random.Random, text: str, first_is_word: bool = True) -> str:
    """Sometimes lower-case the first letter or drop the final punctuation, as people type.

    The first letter's case is changed only when it starts an ordinary word: a question that
    starts with a unit symbol keeps it ("mL to cups", not "ML").
    """
    if first_is_word:
        text = (text[0].lower() if rng.random() < 0.3 else text[0].upper()) + text[1:]
    if rng.random() < 0.2 and text[-1] in ".?":
        text = text[:-1]
    return text
