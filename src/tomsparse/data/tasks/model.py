"""Task model for the three Kosinski-style false-belief families and ToMi, and prompt rendering.

A task keeps the reference's field names, so a task read from a user's file and a task from
our own bank render through the same code and export back to the same format:

* unexpected contents (reference key ``s1``): ``txt``, ``txt_correctlabel``, ``o1`` (true
  contents), ``o2`` (what the label says), ``c``, ``xnam``, ``xpro``, ``obj_pro``, ``pos_pro``,
  ``NUMBER``; the texts use the placeholders ``CX S1 S2 XNAM XPRO OBJ_PRO POS_PRO``;
* unexpected transfer (``s2``): ``txt``, ``txt_notransfer``, ``txt_informed`` (a sentence
  appended to ``txt``), ``txt_present``, ``o1`` (new location), ``o2`` (old location), ``q1``
  (probe: where the object is), ``q2`` (probe: where the protagonist will look), ``NUMBER``;
* irony (``s3``): ``txt`` (remark contradicted by its context; answer "No"), ``txt_reverse``
  (context agrees; answer "Yes"), ``NUMBER``.

Families 1 and 2 render 4 conditions x {original, reversed} x 2 probes = 16 prompts per task;
irony renders 2 prompts. Reversal swaps o1 and o2 in the story and in the expected answers.

Two renderers turn a task into prompt texts (``Task.renderer``):

* ``"tomsparse"`` (ours; the built-in bank): grammatical (POS_PRO cousin), whitespace collapsed,
  every sentence capitalised, a one-pass o1/o2 swap;
* ``"reference"`` (the default for a user's .py / .json file): the reference's own renderer,
  quirks included, so that a file renders character for character as the reference renders it
  (``render_reference``).

Both give the same conditions, scenario order, probes' wording and expected answers. Generated
answers are matched by one of two first-word rules (``answer_word``, ``Prompt.matches``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from tomsparse.errors import UserError

# Reference directory names of the families (``tom/<rep>/<m>/<family>/results.csv``), the
# keys of the reference's .json format and the list names of its .py format.
FAMILIES = ("unexpected", "transfer", "irony", "tomi")
REFERENCE_FAMILIES = ("unexpected", "transfer", "irony")
JSON_KEYS = {"unexpected": "s1", "transfer": "s2", "irony": "s3"}
PY_NAMES = {"unexpected": "tsks1", "transfer": "tsks2", "irony": "tsks3"}
FAMILY_TITLES = {"unexpected": "unexpected contents", "transfer": "unexpected transfer",
                 "irony": "irony", "tomi": "ToMi"}

# How a task's prompts are written: the reference's renderer or ours (see the module docstring).
RENDERERS = ("reference", "tomsparse")
# The name a task file declares its renderer under (``renderer = "..."`` in .py, a key in .json).
RENDERER_KEY = "renderer"
# How a generated answer's first word is compared with the expected one (``answer_word``).
MATCH_RULES = ("tomsparse", "reference")

COMPLETE = "Complete the following story:"
READ = "Read the following story:"

# Conditions in the reference's column order; each is run original (F) and reversed (T).
CONTENTS_CONDITIONS = ("false belief", "correct label", "informed protagonist", "open container")
TRANSFER_CONDITIONS = ("false belief", "no transfer", "informed protagonist", "present protagonist")
IRONY_CONDITIONS = ("irony", "irony reversed")

# Optional irony field: which of the bank's story scenarios a task was drawn from.
SCENARIO_FIELD = "SCENARIO"
REQUIRED_FIELDS = {
    "unexpected": ("txt", "txt_correctlabel", "o1", "o2", "c", "xnam", "xpro", "obj_pro",
                   "pos_pro"),
    "transfer": ("txt", "txt_notransfer", "txt_informed", "txt_present", "o1", "o2", "q1", "q2"),
    "irony": ("txt", "txt_reverse"),
}
# Optional per-task overrides of the sentences the renderer adds to unexpected-contents
# stories (our extension; the reference special-cases a few of Kosinski's tasks by number
# instead). They may use the same placeholders as ``txt``.
CONTENTS_OPTIONAL = ("action_closed", "action_open", "q1", "q2")

# Sentences the protocol appends to an unexpected-contents story per condition, and its two
# probes. The informed sentence says POS_PRO cousin (the reference writes OBJ_PRO, which is
# only grammatical for "her").
ACTION_CLOSED = "XNAM does not open the CX and does not look inside. XNAM reads the label."
ACTION_OPEN = "XNAM opens the CX and looks inside. XNAM reads the label."
INFORMED = ('A cousin calls XNAM and tells OBJ_PRO that the CX has S1 in it, and that XPRO '
            'should ignore the label that says "S2". XNAM believes POS_PRO cousin.')
PROBE_SEE = "XPRO opens the CX and looks inside. XPRO can clearly see that it is full of"
PROBE_TELL = "XNAM calls a friend to tell them that XPRO has just found a CX full of"

# Placeholders of the unexpected-contents texts, longest first so that one regex pass
# replaces each occurrence exactly once.
_PLACEHOLDER_FIELDS = {"OBJ_PRO": "obj_pro", "POS_PRO": "pos_pro", "XNAM": "xnam",
                       "XPRO": "xpro", "CX": "c", "S1": "o1", "S2": "o2"}
_PLACEHOLDER_RE = re.compile("|".join(_PLACEHOLDER_FIELDS))
# What an unreplaced placeholder looks like in a rendered prompt: one of the reference's
# names standing as a word, a format-style "{name}", or the reference's swap marker.
_LEFTOVER_RE = re.compile(r"\b(?:OBJ_PRO|POS_PRO|XNAM|XPRO|CX|S1|S2)\b|\{[A-Za-z_][A-Za-z0-9_]*\}"
                          r"|####")
# A lowercase letter starting a sentence (after ". ", "! ", '." ' ...), e.g. a pronoun that
# replaced XPRO. The reference fixes only ". h" and ". s"; this is the general form.
_SENTENCE_START_RE = re.compile(r'((?:^|[.!?]["\u201d\']?)\s+|^)([a-z])')

# Characters removed from a generated first word before the exact match. The reference
# removes . , ' " ; anywhere in the word; we also drop : ! ? so "Yes!" counts as "Yes".
PUNCTUATION = ".,'\";:!?"
_PUNCT_TABLE = str.maketrans("", "", PUNCTUATION)
REFERENCE_PUNCTUATION = ".,'\";"
_REFERENCE_PUNCT_TABLE = str.maketrans("", "", REFERENCE_PUNCTUATION)


def first_word(text: str) -> str:
    """The first whitespace-separated word of ``text`` with punctuation removed."""
    words = text.strip().split()
    return words[0].translate(_PUNCT_TABLE) if words else ""


def reference_first_word(text: str) -> str:
    """The reference's first word of a generation: the first whitespace-separated word with
    only . , ' " ; removed ("Yes!" stays "Yes!", "(Yes" stays "(Yes"); "" if there is none."""
    words = text.split()
    return words[0].translate(_REFERENCE_PUNCT_TABLE) if words else ""


def _check_rule(rule: str) -> str:
    if rule not in MATCH_RULES:
        raise UserError(f"unknown answer-matching rule {rule!r}; use one of "
                        f"{', '.join(MATCH_RULES)}")
    return rule


def answer_word(text: str, rule: str = "tomsparse") -> str:
    """The word of a generation that is compared with the expected word under ``rule``."""
    return reference_first_word(text) if _check_rule(rule) == "reference" else first_word(text)


def check_renderer(renderer, where: str) -> str:
    """``renderer`` if it is one of RENDERERS; a UserError naming ``where`` otherwise."""
    if renderer not in RENDERERS:
        raise UserError(f"{where}: unknown renderer {renderer!r}; use one of "
                        f"{', '.join(repr(r) for r in RENDERERS)}")
    return renderer


def capitalize_sentences(text: str) -> str:
    return _SENTENCE_START_RE.sub(lambda m: m.group(1) + m.group(2).upper(), text)


def swap_words(text: str, a: str, b: str) -> str:
    """Swap every occurrence of ``a`` and ``b`` in one pass (the reversal of a story).

    Longer alternatives are tried first, so "tea" / "green tea" swap cleanly; the
    reference's three sequential replaces garble such pairs.
    """
    if not a or not b or a == b:
        return text
    options = sorted({a, b}, key=len, reverse=True)
    pattern = re.compile("|".join(re.escape(o) for o in options))
    return pattern.sub(lambda m: b if m.group(0) == a else a, text)


@dataclass(frozen=True)
class Prompt:
    """One rendered prompt and what counts as its answer."""

    family: str          # unexpected | transfer | irony | tomi
    task_id: str         # the task's NUMBER (or story id for ToMi)
    task_index: int      # row of the task within its family (reference results.csv row)
    condition: str       # e.g. "false belief", "irony reversed", "second-order"
    reversed: bool       # o1/o2 swapped (families 1-2), the literal variant (irony)
    scenario: str        # reference column key, e.g. "false belief (T)"; ToMi: the condition
    probe: str           # "a"/"b" (reality / belief probe of families 1-2); "" otherwise
    text: str            # the full prompt; the answer follows after one space
    expected: str        # the expected answer (a word or short phrase)
    alternative: str     # the competing answer (o1 vs o2, Yes vs No, ToMi's other location)
    cell: str = ""       # prompts of a task with the same cell must all be right for the cell
                         # to count; empty = the scenario (the two probes of families 1-2)
    cluster: str = ""    # the unit of resampling this prompt belongs to, where it is wider than
                         # its task (irony: the story scenario several tasks reuse); "" = task
                         # (``cluster_of`` applies the rule)

    @property
    def cell_id(self) -> str:
        return self.cell or self.scenario

    @property
    def expected_word(self) -> str:
        return first_word(self.expected)

    @property
    def alternative_word(self) -> str:
        return first_word(self.alternative)

    @property
    def reference_expected_word(self) -> str:
        """The reference's expected word: the answer's first word, nothing stripped."""
        words = self.expected.split()
        return words[0] if words else ""

    def expected_word_for(self, rule: str = "tomsparse") -> str:
        return self.reference_expected_word if _check_rule(rule) == "reference" \
            else self.expected_word

    def matches(self, generated: str, rule: str = "tomsparse") -> bool:
        """Whether a generation is right: its first word equals the expected word under
        ``rule`` ("tomsparse": both sides stripped of PUNCTUATION; "reference": only
        . , ' " ; removed from the generated word, case-sensitive)."""
        return answer_word(generated, rule) == self.expected_word_for(rule)


@dataclass(frozen=True)
class GradientPrompt:
    """A ToM prompt for sensitivity scores: the full prompt text, ending where the answer
    starts, and (when known) the expected answer."""

    txt: str
    answer: str | None = None


@dataclass
class Task:
    """One task of a reference family, with its raw fields (kept for export)."""

    family: str
    index: int
    fields: dict
    source: str = "builtin"
    renderer: str = "tomsparse"    # one of RENDERERS

    @property
    def number(self):
        return self.fields.get("NUMBER", self.index + 1)

    @property
    def task_id(self) -> str:
        return str(self.number)

    def where(self, field_name: str | None = None) -> str:
        """'<file>: <family> task <i> (NUMBER n)[, field 'x']' for error messages."""
        key = JSON_KEYS.get(self.family, self.family)
        text = (f"{self.source}: {FAMILY_TITLES[self.family]} ({key}) task {self.index} "
                f"(NUMBER {self.number})")
        return text + (f", field '{field_name}'" if field_name else "")

    def render(self) -> list[Prompt]:
        if self.renderer == "reference":
            return render_reference(self)
        if self.family == "unexpected":
            return _render_contents(self)
        if self.family == "transfer":
            return _render_transfer(self)
        return _render_irony(self)


def make_task(family: str, index: int, raw, source: str, renderer: str = "tomsparse") -> Task:
    """Validate one raw task dict of a reference family; raise ``UserError`` naming the file,
    the task and the field on anything the renderer could not use."""
    check_renderer(renderer, source)
    key = JSON_KEYS[family]
    if not isinstance(raw, dict):
        raise UserError(f"{source}: {FAMILY_TITLES[family]} ({key}) task {index}: expected a "
                        f"dict of fields, got {type(raw).__name__}")
    task = Task(family=family, index=index, fields=dict(raw), source=source, renderer=renderer)
    for name in REQUIRED_FIELDS[family]:
        if name not in raw:
            raise UserError(f"{task.where(name)}: missing field")
        value = raw[name]
        if not isinstance(value, str) or not value.strip():
            raise UserError(f"{task.where(name)}: must be a non-empty string, got {value!r}")
    if family == "unexpected":
        for name in CONTENTS_OPTIONAL:
            if name in raw and (not isinstance(raw[name], str) or not raw[name].strip()):
                raise UserError(f"{task.where(name)}: must be a non-empty string, "
                                f"got {raw[name]!r}")
    if "NUMBER" in raw:
        number = raw["NUMBER"]
        if isinstance(number, bool) or not isinstance(number, (int, str)):
            raise UserError(f"{source}: {FAMILY_TITLES[family]} ({key}) task {index}, field "
                            "'NUMBER': must be an integer or a string")
        if isinstance(number, int) and abs(number) >= 10 ** 18:
            raise UserError(f"{source}: {FAMILY_TITLES[family]} ({key}) task {index}, field "
                            f"'NUMBER': an integer of {number.bit_length():,} bits; a task "
                            "NUMBER has at most 18 digits")
        if isinstance(number, str) and len(number) > 200:
            raise UserError(f"{source}: {FAMILY_TITLES[family]} ({key}) task {index}, field "
                            f"'NUMBER': {len(number):,} characters; a task NUMBER has at most "
                            "200")
    if family in ("unexpected", "transfer"):
        w1, w2 = first_word(raw["o1"]), first_word(raw["o2"])
        if not w1 or not w2:
            raise UserError(f"{task.where('o1' if not w1 else 'o2')}: the answer has no word "
                            f"left once punctuation is removed")
        if w1.lower() == w2.lower():
            raise UserError(f"{task.where('o2')}: the first word of the expected answer "
                            f"{raw['o1']!r} is the same as the alternative's {raw['o2']!r} "
                            f"({w1!r}); the first word must tell the two answers apart")
    # Render once now, so that a placeholder left in a text fails at load time, naming the
    # field it came from.
    task.render()
    return task


def _check_rendered(task: Task, field_name: str, text: str) -> str:
    leftover = _LEFTOVER_RE.search(text)
    if leftover:
        raise UserError(f"{task.where(field_name)}: placeholder {leftover.group(0)!r} is left "
                        f"unreplaced in the rendered text {text!r}")
    return text


def _fill_contents(task: Task, field_name: str, template: str) -> str:
    """Replace the unexpected-contents placeholders in one text and check nothing is left."""
    values = task.fields
    text = _PLACEHOLDER_RE.sub(lambda m: values[_PLACEHOLDER_FIELDS[m.group(0)]], template)
    return _check_rendered(task, field_name, text)


def _render_contents(task: Task) -> list[Prompt]:
    f = task.fields
    o1, o2 = f["o1"], f["o2"]
    closed = f.get("action_closed", ACTION_CLOSED)
    opened = f.get("action_open", ACTION_OPEN)
    parts = {
        "txt": _fill_contents(task, "txt", f["txt"]),
        "txt_correctlabel": _fill_contents(task, "txt_correctlabel", f["txt_correctlabel"]),
        "action_closed": _fill_contents(task, "action_closed", closed),
        "action_open": _fill_contents(task, "action_open", opened),
        "informed": _fill_contents(task, "informed", INFORMED),
    }
    stories = {
        "false belief": f"{parts['txt']} {parts['action_closed']}",
        "correct label": f"{parts['txt_correctlabel']} {parts['action_closed']}",
        "informed protagonist": f"{parts['txt']} {parts['action_closed']} {parts['informed']}",
        "open container": f"{parts['txt']} {parts['action_open']}",
    }
    probe_a = capitalize_sentences(_fill_contents(task, "q1", f.get("q1", PROBE_SEE)))
    probe_b = capitalize_sentences(_fill_contents(task, "q2", f.get("q2", PROBE_TELL)))
    # Expected (reality probe, belief probe) per condition, before reversal.
    expected = {"false belief": (o1, o2), "correct label": (o1, o1),
                "informed protagonist": (o1, o1), "open container": (o1, o1)}
    prompts = []
    for condition in CONTENTS_CONDITIONS:
        story = capitalize_sentences(" ".join(stories[condition].split()))
        prompts += _two_probes(task, condition, story, probe_a, probe_b, expected[condition],
                               o1, o2)
    return prompts


def _render_transfer(task: Task, reference: bool = False) -> list[Prompt]:
    """Ours: whitespace collapsed, probes stripped, one-pass swap; ``reference``: the texts as
    written, the reference's plain-replacement swap."""
    f = task.fields
    o1, o2 = f["o1"], f["o2"]
    for name in ("txt", "txt_notransfer", "txt_informed", "txt_present", "q1", "q2"):
        _check_rendered(task, name, f[name])
    stories = {
        "false belief": f["txt"],
        "no transfer": f["txt_notransfer"],
        "informed protagonist": f"{f['txt']} {f['txt_informed']}",
        "present protagonist": f["txt_present"],
    }
    expected = {"false belief": (o1, o2), "no transfer": (o2, o2),
                "informed protagonist": (o1, o1), "present protagonist": (o1, o1)}
    prompts = []
    for condition in TRANSFER_CONDITIONS:
        if reference:
            prompts += _two_probes(task, condition, stories[condition], f["q1"], f["q2"],
                                   expected[condition], o1, o2, swap=reference_swap)
        else:
            story = " ".join(stories[condition].split())
            prompts += _two_probes(task, condition, story, f["q1"].strip(), f["q2"].strip(),
                                   expected[condition], o1, o2)
    return prompts


def _two_probes(task: Task, condition: str, story: str, probe_a: str, probe_b: str,
                expected: tuple[str, str], o1: str, o2: str, swap=swap_words) -> list[Prompt]:
    """The original and reversed scenario of one condition, each with both probes; ``swap``
    reverses the story (never the probes, never the prefix)."""
    out = []
    for reverse in (False, True):
        text = swap(story, o1, o2) if reverse else story
        for probe, probe_text, answer in (("a", probe_a, expected[0]),
                                          ("b", probe_b, expected[1])):
            if reverse:
                answer = o2 if answer == o1 else o1
            other = o2 if answer == o1 else o1
            out.append(Prompt(
                family=task.family, task_id=task.task_id, task_index=task.index,
                condition=condition, reversed=reverse,
                scenario=f"{condition} {'(T)' if reverse else '(F)'}", probe=probe,
                text=f"{COMPLETE} {text} {probe_text}", expected=answer, alternative=other))
    return out


def cluster_of(task_id, cluster: str = "") -> str:
    """The one rule for the unit a prompt resamples in: its ``cluster`` where it has one (a
    unit wider than its task), else its task, ``"task {task_id}"``."""
    return cluster or f"task {task_id}"


def _task_cluster(task: Task) -> str:
    """The cluster a task's prompts resample in (``Prompt.cluster``, else the task)."""
    return cluster_of(task.task_id, _irony_cluster(task) if task.family == "irony" else "")


def _irony_cluster(task: Task) -> str:
    """The scenario an irony task was written from (the bank's ``SCENARIO`` field), so that the
    tasks reusing one scenario resample together; "" (the task alone) when the file has none."""
    scenario = task.fields.get(SCENARIO_FIELD)
    return f"irony scenario {scenario}" if scenario not in (None, "") else ""


def _render_irony(task: Task, reference: bool = False) -> list[Prompt]:
    """Ours collapses whitespace; ``reference`` keeps the text as written."""
    f = task.fields
    prompts = []
    for name, condition, answer, other, reverse, scenario in (
            ("txt", IRONY_CONDITIONS[0], "No", "Yes", False, "Irony"),
            ("txt_reverse", IRONY_CONDITIONS[1], "Yes", "No", True, "Irony reversed")):
        story = _check_rendered(task, name, f[name])
        story = story if reference else " ".join(story.split())
        prompts.append(Prompt(
            family="irony", task_id=task.task_id, task_index=task.index, condition=condition,
            reversed=reverse, scenario=scenario, probe="",
            text=f"{READ} {story} Correct Answer:", expected=answer, alternative=other,
            cluster=_irony_cluster(task)))
    return prompts


# ---------------------------------------------------------------- the reference's renderer
#
# The sentences the reference's evaluation script adds to unexpected-contents stories, as it
# writes them (issue 13 lists them). Kosinski's tasks 1 (a device "connected to") and 17 (a box
# of CDs) get their own; typos and the trailing space are the reference's.
REFERENCE_INFORMED = ('A cousin calls XNAM and tells OBJ_PRO that the CX has S1 in it, and that '
                      'XPRO should ignore the label that says "S2". XNAM believes OBJ_PRO cousin.')
REFERENCE_ACTIONS = {  # NUMBER -> (closed, open); any other NUMBER: ACTION_CLOSED, ACTION_OPEN
    "1": ("XNAM does not connect to the CX and does not explore its contents. XNAM reads the "
          "label on the CX. ",
          "XNAM connects to the CX and explores its contents. XNAM reads the label on the CX."),
    "17": ("XNAM does not open the box and does not listen to any of the CDs. XNAM reads the "
           "label.",
           "XNAM puts one in a CD player and listens to the songs. XNAM can can clearly hear "
           "that it is full of S2 music."),
}
# Tasks whose belief probe says "received" instead of "found".
REFERENCE_RECEIVED = ("12", "14")
# The reference's swap marker (``text.replace(o1, "####")...``).
SWAP_MARKER = "####"


def render_reference(task: Task) -> list[Prompt]:
    """The task's prompts exactly as the reference's evaluation script writes them.

    It reproduces the reference's quirks on purpose, so that a reference-format file scores on
    the same prompt texts as in the reference: "XNAM believes OBJ_PRO cousin", Kosinski's
    tasks 1, 12, 14 and 17 special-cased by NUMBER (with "can can" and the trailing space of
    task 1's closed sentence, which doubles the space before the next piece), sequential
    ``str.replace`` of the placeholders, only ". h" / ". s" capitalised, no whitespace
    collapsed, and a reversal by three plain replaces (so "tea" / "green tea" garble).

    Two things differ from the reference, both where it would fail or misbehave: NUMBER 1 and
    "1" are the same task (the reference compares with the int only), and a task without
    NUMBER gets no special case (the reference raises KeyError). Expected answers are ours
    (o1 / o2 by condition, swapped on reversal), not the reference's text-replaced ones; they
    differ only when one answer contains the other. The optional fields ``action_closed``,
    ``action_open``, ``q1`` and ``q2`` of an unexpected-contents task replace the sentence they
    name (the NUMBER special cases included); a probe override gets the same placeholder
    replacement as the story and its first letter upper-cased.
    """
    if task.family == "unexpected":
        return _reference_contents(task)
    if task.family == "transfer":
        return _render_transfer(task, reference=True)
    return _render_irony(task, reference=True)


def reference_fill(text: str, fields: dict) -> str:
    """The reference's placeholder replacement: plain replaces in its order, then only ". h"
    and ". s" capitalised (a pronoun starting a sentence)."""
    text = (text.replace("S1", fields["o1"]).replace("S2", fields["o2"])
            .replace("CX", fields["c"]).replace("XNAM", fields["xnam"])
            .replace("XPRO", fields["xpro"]).replace("OBJ_PRO", fields["obj_pro"])
            .replace("POS_PRO", fields["pos_pro"]))
    return text.replace(". h", ". H").replace(". s", ". S")


def reference_swap(text: str, o1: str, o2: str) -> str:
    """The reference's reversal: o1 and o2 swapped by plain replaces through a marker."""
    return text.replace(o1, SWAP_MARKER).replace(o2, o1).replace(SWAP_MARKER, o2)


def _reference_number(task: Task) -> str | None:
    # 1 in a .py file, "1" in a .json file: the same task (see render_reference).
    number = task.fields.get("NUMBER")
    return None if number is None else str(number)


def _reference_contents(task: Task) -> list[Prompt]:
    f = task.fields
    o1, o2, number = f["o1"], f["o2"], _reference_number(task)
    closed, opened = REFERENCE_ACTIONS.get(number, (ACTION_CLOSED, ACTION_OPEN))
    closed, opened = f.get("action_closed", closed), f.get("action_open", opened)
    # Each piece alone first, so that a placeholder left in it is reported by its field.
    for name, text in (("txt", f["txt"]), ("txt_correctlabel", f["txt_correctlabel"]),
                       ("action_closed", closed), ("action_open", opened),
                       ("informed", REFERENCE_INFORMED)):
        _check_rendered(task, name, reference_fill(text, f))
    # The reference joins the raw pieces with one space and fills the whole story at once
    # (". h" can span a join).
    stories = {
        "false belief": f"{f['txt']} {closed}",
        "correct label": f"{f['txt_correctlabel']} {closed}",
        "informed protagonist": f"{f['txt']} {closed} {REFERENCE_INFORMED}",
        "open container": f"{f['txt']} {opened}",
    }
    # The reference builds its probes from the fields, not from placeholders; the pronoun
    # starting a sentence is capitalised with str.capitalize, as it does.
    pro = f["xpro"].capitalize()
    probe_a = (f"{pro} opens the {f['c']} and looks inside. {pro} can clearly see that it is "
               f"full of")
    if number == "17":
        probe_a = (f"{pro} puts one in a CD player and listens to the songs. {pro} can clearly "
                   f"hear that it is full of")
    probe_b = (f"{f['xnam']} calls a friend to tell them that {f['xpro']} has just found a "
               f"{f['c']} full of")
    if number in REFERENCE_RECEIVED:
        probe_b = probe_b.replace("found", "received")
    probes = {"q1": probe_a, "q2": probe_b}
    for name in ("q1", "q2"):
        if name in f:
            text = reference_fill(f[name], f)
            probes[name] = _check_rendered(task, name, text[:1].upper() + text[1:])
    expected = {"false belief": (o1, o2), "correct label": (o1, o1),
                "informed protagonist": (o1, o1), "open container": (o1, o1)}
    prompts = []
    for condition in CONTENTS_CONDITIONS:
        story = reference_fill(stories[condition], f)
        prompts += _two_probes(task, condition, story, probes["q1"], probes["q2"],
                               expected[condition], o1, o2, swap=reference_swap)
    return prompts


@dataclass
class TaskSet:
    """Tasks of up to four families, from one source (a file, the bank or ToMi)."""

    name: str
    tasks: dict = field(default_factory=dict)     # family -> list[Task] (reference families)
    tomi: list = field(default_factory=list)      # list[tomi.TomiItem]

    @property
    def renderer(self) -> str:
        """The renderer of its tasks: one of RENDERERS, "mixed" for a merge of files
        rendered differently; "tomsparse" when it has no reference-family tasks."""
        found = {t.renderer for tasks in self.tasks.values() for t in tasks}
        if len(found) > 1:
            return "mixed"
        return found.pop() if found else "tomsparse"

    def with_renderer(self, renderer: str) -> "TaskSet":
        """The same tasks rendered by ``renderer`` (validated again, so that a placeholder the
        other renderer would leave is reported)."""
        tasks = {family: [make_task(family, t.index, t.fields, t.source, renderer)
                          for t in ts] for family, ts in self.tasks.items()}
        return TaskSet(name=self.name, tasks=tasks, tomi=list(self.tomi))

    def families(self) -> list[str]:
        out = [f for f in REFERENCE_FAMILIES if self.tasks.get(f)]
        return out + (["tomi"] if self.tomi else [])

    def count(self, family: str) -> int:
        return len(self.tomi) if family == "tomi" else len(self.tasks.get(family, []))

    def __len__(self) -> int:
        return sum(self.count(f) for f in self.families())

    def prompts(self) -> list[Prompt]:
        out: list[Prompt] = []
        for family in REFERENCE_FAMILIES:
            for task in self.tasks.get(family, []):
                out += task.render()
        for item in self.tomi:
            out.append(item.prompt())
        return out

    def head(self, n: int | None) -> "TaskSet":
        """The first ``n`` tasks of each family (ToMi: the first ``n`` stories, whole)."""
        if n is None:
            return self
        tomi = []
        if self.tomi:
            stories = list(dict.fromkeys(item.story_index for item in self.tomi))[:n]
            keep = set(stories)
            tomi = [item for item in self.tomi if item.story_index in keep]
        return TaskSet(name=f"{self.name}[:{n}]",
                       tasks={f: list(ts[:n]) for f, ts in self.tasks.items()}, tomi=tomi)

    def sizes(self, unit: str = "tasks") -> dict[str, int]:
        """Per family, how many ``unit``s it has: "tasks" (ToMi: stories, as ``head`` counts
        them) or "clusters" (as ``head_clusters`` counts them)."""
        out = {}
        for family in self.families():
            if family == "tomi":
                out[family] = len({item.story_index for item in self.tomi})
            elif unit == "clusters":
                out[family] = len({_task_cluster(t) for t in self.tasks[family]})
            else:
                out[family] = len(self.tasks[family])
        return out

    def head_clusters(self, n: int | None) -> "TaskSet":
        """The first tasks of each family that cover ``n`` clusters (the unit the verdicts
        resample: a task, or for irony the story scenario several tasks share; ToMi: the first
        ``n`` stories)."""
        if n is None:
            return self
        kept = {}
        for family, tasks in self.tasks.items():
            seen: set = set()
            out = []
            for task in tasks:
                key = _task_cluster(task)
                if key not in seen and len(seen) >= n:
                    break
                seen.add(key)
                out.append(task)
            kept[family] = out
        tomi = self.head(n).tomi
        return TaskSet(name=f"{self.name}[:{n} clusters]", tasks=kept, tomi=tomi)

    def to_reference(self) -> dict:
        """The tasks in the reference's .json layout (``{"s1": [...], "s2": [...], ...}``)."""
        return {JSON_KEYS[f]: [dict(t.fields) for t in self.tasks.get(f, [])]
                for f in REFERENCE_FAMILIES}

    def summary(self) -> str:
        parts = [f"{self.count(f)} {FAMILY_TITLES[f]}" for f in self.families()]
        return f"{self.name}: " + (", ".join(parts) if parts else "no tasks")
