"""Whether the prompts sensitivity scores were computed on share stories with the evaluation.

Scores computed on the very stories a sweep evaluates would make a ToM mask look specific for
the wrong reason (it would hold those stories' answers, not the ability). The built-in bank is
disjoint by construction (scores on its train split, evaluation on its eval split), but a user
can pass one task or prompt file for both. The check compares stories, not prompts: a prompt is
reduced to its story (``story_key``), so two probes of one story, the two renderers' versions of
one story, or a ToMi story with another question count as the same story.

A score store records the hash of each score prompt's story (``story_hashes``; the store keeps
them in its manifest, see ``tomsparse.scores.store.story_hashes``), so the check needs no
prompt text at evaluation time. ``check_overlap`` is what a command calls: it refuses an overlap
with one line naming the tasks unless the user allows it, and returns the manifest record.
"""

from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
from dataclasses import dataclass
from typing import Iterable, Sequence

from tomsparse.data.tasks.model import COMPLETE, READ
from tomsparse.errors import UserError

log = logging.getLogger(__name__)

# The instructions our renderers and the reference's put before a story.
INSTRUCTION_PREFIXES = (COMPLETE, READ)
# Where the answer part of a prompt starts: irony's "Correct Answer:" (ours and the
# reference's) and ToMi's "Question: ... Answer: ...". Everything from it on is not the story.
_ANSWER_TAIL = re.compile(r"\b(?:Correct\s+Answer|Question)\s*:", re.IGNORECASE)
# A sentence ends at . ! or ? (possibly several), optionally followed by closing quotes or
# brackets, before whitespace or the end of the text.
_SENTENCE_END = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*(?=\s|$)")
# The second half of unexpected contents' reality probe ("She opens the box and looks inside.
# She can clearly see that it is full of"; the reference's task 17: "... listens to the songs.
# He can clearly hear that it is full of"): its first half is a whole sentence, dropped too.
_REALITY_PROBE = re.compile(r"\bcan\s+(?:can\s+)?clearly\s+(?:see|hear)\s+that\s+it\s+is\s+"
                            r"full\s+of$", re.IGNORECASE)
_PREFIX_RES = tuple(re.compile(r"^\s*" + r"\s+".join(map(re.escape, p.split())) + r"\s*",
                               re.IGNORECASE) for p in INSTRUCTION_PREFIXES)
# How many task ids the refusal names before "and N more".
_NAMED_TASKS = 5


def _strip_prefix(text: str) -> str:
    for pattern in _PREFIX_RES:
        match = pattern.match(text)
        if match:
            return text[match.end():]
    return text


def _drop_probe(story: str) -> str:
    """``story`` without its trailing probe or question (see ``story_hashes``, step 3); ""
    when nothing would be left."""
    ends = list(_SENTENCE_END.finditer(story))
    if not ends:
        return story
    fragment = story[ends[-1].end():].strip()
    if fragment:
        # An unfinished last sentence is the completion probe.
        kept = ends[:-1] if _REALITY_PROBE.search(fragment) else ends
        return story[:kept[-1].end()] if kept else ""
    if "?" in ends[-1].group(0) and len(ends) > 1:
        # A final question (irony's "Did Ben mean ...?") asks about the story.
        return story[:ends[-2].end()]
    return story


def _words(text: str) -> list[str]:
    """Lowercased (casefolded) words, punctuation stripped at their edges, empty ones gone."""
    out = []
    for word in text.casefold().split():
        start, end = 0, len(word)
        while start < end and unicodedata.category(word[start]).startswith("P"):
            start += 1
        while end > start and unicodedata.category(word[end - 1]).startswith("P"):
            end -= 1
        if start < end:
            out.append(word[start:end])
    return out


def story_key(text: str) -> str:
    """The normalised story of a rendered ToM prompt (see ``story_hashes`` for the rules)."""
    body = _strip_prefix(text)
    tails = list(_ANSWER_TAIL.finditer(body))
    if tails:
        body = body[:tails[-1].start()]
    story = _drop_probe(body.strip())
    words = _words(story) or _words(body) or _words(text)
    return " ".join(words)


def story_hashes(texts: Iterable[str]) -> list[str]:
    """The SHA-256 (hex) of the UTF-8 bytes of each text's ``story_key``, in order.

    The story of a prompt is found in this order:

    1. a leading instruction, "Complete the following story:" or "Read the following story:"
       (any case and spacing), is removed;
    2. the answer part is cut off: from the last "Correct Answer:" (irony) or "Question:"
       (ToMi's "Question: ... Answer: ...") on, any case;
    3. the probe is dropped. Sentences end at ``.``, ``!`` or ``?`` (closing quotes and brackets
       included) before whitespace or the end. If text follows the last sentence end, that
       unfinished sentence is the completion probe and is dropped; when it is unexpected
       contents' reality probe ("... can clearly see (hear) that it is full of"), the sentence
       before it, the probe's first half ("She opens the box and looks inside."), goes too.
       Otherwise, if the last sentence is a question and not the only sentence, it is dropped
       (irony's question about the remark);
    4. the rest is casefolded (``str.casefold``, a stronger lowercase), split on whitespace,
       each word stripped of Unicode punctuation (categories P*) at both edges, empty words
       removed, and the words joined by single spaces.

    If step 3 leaves no word, the key is step 4 applied to the text after step 2 (and, failing
    that, to the whole text), so every prompt has a non-empty key when it has a word.

    So two probes of one story, a story with another ToMi question, and our renderer's and the
    reference's rendering of the same story text (they differ in spacing and capitals) give one
    key. A reversed story (answers swapped) is a different story, and so is the same task
    rendered with different sentences (e.g. the reference's "believes him cousin" vs our "his").
    A period inside a sentence ("Mr. Smith will look in the") ends a sentence for step 3.
    """
    return [hashlib.sha256(story_key(t).encode("utf-8")).hexdigest() for t in texts]


def _natural_key(text: str) -> list:
    return [(0, int(part), "") if part.isdigit() else (1, 0, part)
            for part in re.split(r"(\d+)", text) if part]


@dataclass(frozen=True)
class OverlapReport:
    """Stories the score prompts share with the evaluation prompts.

    ``n_score_stories`` and ``n_eval_stories`` count distinct stories; ``overlapping_tasks``
    are the "family:task_id" of evaluation tasks with at least one prompt whose story is a
    score story, in natural order ("unexpected:2" before "unexpected:10");
    ``n_overlapping_prompts`` counts those evaluation prompts."""

    n_score_stories: int
    n_eval_stories: int
    overlapping_tasks: tuple[str, ...]
    n_overlapping_prompts: int

    @property
    def overlaps(self) -> bool:
        return self.n_overlapping_prompts > 0


def find_overlap(score_story_hashes: Sequence[str], eval_prompts: Iterable) -> OverlapReport:
    """Which evaluation prompts (``Prompt`` objects: ``family``, ``task_id``, ``text``) have a
    story whose hash is among ``score_story_hashes`` (``story_hashes`` of the score prompts)."""
    score = set(score_story_hashes)
    prompts = list(eval_prompts)
    hashes = story_hashes(p.text for p in prompts)
    tasks, n_prompts = set(), 0
    for prompt, digest in zip(prompts, hashes):
        if digest in score:
            n_prompts += 1
            tasks.add(f"{prompt.family}:{prompt.task_id}")
    return OverlapReport(n_score_stories=len(score), n_eval_stories=len(set(hashes)),
                         overlapping_tasks=tuple(sorted(tasks, key=_natural_key)),
                         n_overlapping_prompts=n_prompts)


def _refusal(report: OverlapReport, where: str) -> str:
    named = ", ".join(report.overlapping_tasks[:_NAMED_TASKS])
    more = len(report.overlapping_tasks) - _NAMED_TASKS
    if more > 0:
        named += f" and {more} more"
    return (f"{where}: {report.n_overlapping_prompts} evaluation prompt(s) of "
            f"{len(report.overlapping_tasks)} task(s) ({named}) share their story with the "
            f"prompts the ToM scores were computed on, so the verdicts would be judged on "
            f"stories the mask was chosen on; use disjoint task sets (for instance scores on "
            f"builtin:train, evaluation on builtin) or pass --allow-overlap")


def check_overlap(score_story_hashes: Sequence[str] | None, eval_prompts: Iterable,
                  allow: bool, where: str) -> dict:
    """Refuse (``UserError``, one line naming up to five tasks and the fix) evaluation prompts
    sharing a story with the score prompts, unless ``allow``; return the manifest record.

    ``score_story_hashes`` None (a store written before the hashes were recorded, or imported
    from reference chunks) cannot be checked: the record says so and nothing is raised. ``where``
    opens the message (for instance "--tasks my.json vs scores runs/x/scores/tom")."""
    if score_story_hashes is None:
        return {"checked": False,
                "reason": "score store has no story hashes (written before they were "
                          "recorded, or imported from reference chunks)"}
    report = find_overlap(score_story_hashes, eval_prompts)
    if report.overlaps and not allow:
        raise UserError(_refusal(report, where))
    if report.overlaps:
        log.warning("%s: %d evaluation prompt(s) of %d task(s) share their story with the score "
                    "prompts; allowed (--allow-overlap)", where, report.n_overlapping_prompts,
                    len(report.overlapping_tasks))
    return {"checked": True, "allowed": bool(allow),
            "overlapping_tasks": list(report.overlapping_tasks),
            "n_overlapping_prompts": report.n_overlapping_prompts,
            "score_stories": report.n_score_stories, "eval_stories": report.n_eval_stories}
