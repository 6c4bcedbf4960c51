"""``format-control``: a non-ToM task in the ToM prompts' format, for task-swapped score sets
(issue 37, item 2; the controls of claim (f)).

A mask built from ToM scores is ToM-specific only if a mask built the same way from a task of
the same format that needs no mental state hurts ToM less. This module generates such a task.
Every item is written here: nothing is downloaded or read from a file. The items come from
the word lists and sentence frames below (``NAMES``, ``OBJECTS``, ``PLACES``, ``ITEMS``,
``NUMBER_WORDS`` and the ``*_FRAMES`` / ``*_PROBES``), filled by a seeded ``random.Random``
(``format_control_prompts``), so the same seed always gives the same items, in the same
order. Two kinds, alternating:

* ``tracking``: object tracking. A person puts an object in a place, it is moved one to three
  times (with a neutral sentence in between), and the probe asks where the object is now, or
  where it was at the start: "Greta puts the key in the tray. Then Greta moves the key to the
  bowl. Now the key is in the" -> "bowl".
* ``counting``: one-step arithmetic word problems: "Boris has seven cards. Boris gives two
  cards to Yara. Now Boris has" -> "five" (numbers one to twelve, written as words).

Each item is rendered as the bank renders a prompt (``tomsparse.data.tasks.model``): the
instruction "Complete the following story:", the story, then an unfinished probe sentence
whose one-word completion is the answer (the layout of the bank's belief and reality probes),
so a score sample is built from it exactly as from a ToM prompt (``build_tom_samples``: the
answer appended after one space and supervised). No frame uses a mental-state or perception
word (think, believe, know, expect, look for, want, remember, see ...), and the names, objects
and places are none of the bank's (neither split's), so no item shares a story, a name or an
answer word with the evaluation prompts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from tomsparse.data.tasks.model import COMPLETE

KINDS = ("tracking", "counting")
# Items the pool holds (the dataset's --seed draws --nsamples of them, as for the ToM prompts);
# about the size of the bank's train split (1,320 rendered prompts).
POOL_SIZE = 1200
# The generator seed of the pool the score sets draw from (fixed, as the bank's seed is).
POOL_SEED = 0

NAMES = ("Greta", "Ingrid", "Kira", "Maya", "Petra", "Selma", "Tessa", "Yara", "Edith",
         "Frida", "Hilda", "Agnes", "Arne", "Boris", "Emil", "Fabian", "Gustav", "Igor",
         "Jonas", "Karl", "Mats", "Nils", "Otto", "Rafael")
OBJECTS = ("key", "spoon", "coin", "pencil", "glove", "ticket", "whistle", "ribbon",
           "compass", "thimble", "brush", "comb", "stone", "fork", "badge", "sock")
PLACES = ("tray", "pot", "bowl", "vase", "envelope", "sink", "oven", "bin", "basin", "pan",
          "mug", "shoe", "pocket", "cabinet", "kettle", "teapot")
# (singular, plural) of what is counted.
ITEMS = (("card", "cards"), ("pear", "pears"), ("cup", "cups"), ("plate", "plates"),
         ("plum", "plums"), ("shell", "shells"), ("brick", "bricks"), ("flag", "flags"),
         ("cone", "cones"), ("nut", "nuts"), ("leaf", "leaves"), ("stick", "sticks"))
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                "nine", "ten", "eleven", "twelve")

# Object tracking: the first placement, each move, the sentences in between, the probes.
PUT_FRAMES = ("{A} puts the {obj} in the {place}.",
              "{A} places the {obj} in the {place}.",
              "The {obj} is in the {place}.")
MOVE_FRAMES = ("Then {A} moves the {obj} to the {place}.",
               "Next, {B} takes the {obj} out of the {old} and puts it in the {place}.",
               "After that, the {obj} is moved from the {old} to the {place}.",
               "Later, {B} carries the {obj} over to the {place}.")
FILLER_FRAMES = ("{B} sweeps the floor.", "The clock strikes three.",
                 "{B} waters the plants.", "Rain starts to fall outside.",
                 "{A} closes the window.", "{B} sets the table.")
NOW_PROBES = ("Now the {obj} is in the", "At the end, the {obj} is in the")
START_PROBES = ("At the start, the {obj} was in the",)

# Counting: (story, probe) frames with the operation they ask for.
ADD_FRAMES = (("{A} has {n1} {i1}. {B} gives {A} {n2} more {i2}.", "Now {A} has"),
              ("There are {n1} {i1} in the {place}. {A} puts {n2} more {i2} in the {place}.",
               "Now the number of {i} in the {place} is"))
SUB_FRAMES = (("{A} has {n1} {i1}. {A} gives {n2} {i2} to {B}.", "Now {A} has"),
              ("There are {n1} {i1} in the {place}. {A} takes {n2} {i2} out of the {place}.",
               "Now the number of {i} in the {place} is"))


@dataclass(frozen=True)
class FormatPrompt:
    """One generated item: the prompt text (ending where the answer starts), its one-word
    answer, the competing answer and its kind (``KINDS``)."""

    txt: str
    answer: str
    alternative: str
    kind: str


def _count(n: int, item: tuple[str, str]) -> str:
    return f"{NUMBER_WORDS[n]} {item[0] if n == 1 else item[1]}"


def _tracking(rng: random.Random) -> FormatPrompt:
    a, b = rng.sample(NAMES, 2)
    obj = rng.choice(OBJECTS)
    moves = rng.randint(1, 3)
    places = rng.sample(PLACES, moves + 1)
    values = {"A": a, "B": b, "obj": obj}
    sentences = [rng.choice(PUT_FRAMES).format(place=places[0], **values)]
    for k in range(1, moves + 1):
        if rng.random() < 0.5:
            sentences.append(rng.choice(FILLER_FRAMES).format(**values))
        sentences.append(rng.choice(MOVE_FRAMES).format(place=places[k], old=places[k - 1],
                                                        **values))
    if rng.random() < 0.25:
        probe, answer, other = rng.choice(START_PROBES), places[0], places[-1]
    else:
        probe, answer, other = rng.choice(NOW_PROBES), places[-1], places[0]
    text = f"{COMPLETE} {' '.join(sentences)} {probe.format(**values)}"
    return FormatPrompt(txt=text, answer=answer, alternative=other, kind="tracking")


def _counting(rng: random.Random) -> FormatPrompt:
    a, b = rng.sample(NAMES, 2)
    item = rng.choice(ITEMS)
    place = rng.choice(PLACES)
    if rng.random() < 0.5:
        story, probe = rng.choice(ADD_FRAMES)
        n1 = rng.randint(1, 9)
        n2 = rng.randint(1, 12 - n1)
        result, other = n1 + n2, n1
    else:
        story, probe = rng.choice(SUB_FRAMES)
        n1 = rng.randint(2, 12)
        n2 = rng.randint(1, n1 - 1)
        result, other = n1 - n2, n1
    n1_text, n2_text = _count(n1, item).split(" ", 1), _count(n2, item).split(" ", 1)
    values = {"A": a, "B": b, "place": place, "i": item[1], "n1": n1_text[0],
              "i1": n1_text[1], "n2": n2_text[0], "i2": n2_text[1]}
    text = f"{COMPLETE} {story.format(**values)} {probe.format(**values)}"
    return FormatPrompt(txt=text, answer=NUMBER_WORDS[result], alternative=NUMBER_WORDS[other],
                        kind="counting")


_MAKERS = {"tracking": _tracking, "counting": _counting}


def format_control_prompts(n: int = POOL_SIZE, seed: int = POOL_SEED) -> list[FormatPrompt]:
    """``n`` distinct items (no prompt text twice), the kinds alternating (``KINDS``), each kind
    drawn from its own ``random.Random(f"tomsparse-format-control:{seed}:{kind}")`` stream:
    deterministic for a given ``seed``; the first ``k`` items do not depend on ``n``."""
    if n < 0:
        raise ValueError(f"n must be 0 or more, got {n}")
    rngs = {kind: random.Random(f"tomsparse-format-control:{seed}:{kind}") for kind in KINDS}
    seen: set[str] = set()
    out: list[FormatPrompt] = []
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        for _ in range(1000):
            item = _MAKERS[kind](rngs[kind])
            if item.txt not in seen:
                break
        else:  # a word-list design bug: the lists cannot give n distinct items
            raise RuntimeError(f"the format-control word lists cannot give {n} distinct items")
        seen.add(item.txt)
        out.append(item)
    return out
