"""The synthetic tasks of the in-context-learning insight, and the training sequences that teach the skill.

`key_value`: each group of documents shares a random mapping of three story words to three attributes
("cat = red", "dog = blue", ...). A document asks for one key's value among four choices; its few-shot
demonstrations come from its own group (`fewshot_group_by: group`), so only the demonstrations carry the
mapping: at 0 shots the answer is a guess (chance 0.25), at k shots a model that looks the key up in its
context can read it off. The training mixture adds `training_sequences()` (fresh random mappings written in the
same "key = value" form, separated by blank lines like the few-shot prompt) to the bundled stories, so every
rung of the ladder has seen the format and can learn the look-up; the evaluation mappings are drawn from
another seed and, being random, cannot be memorised.

`repeat_answer`: the easier skill. Each group hides one attribute that every document of the group answers,
whatever its key; the demonstrations show it, the question's three distractors never appear in them. A model
that copies the answer its demonstrations share scores well from one shot on; at 0 shots it is chance.
`training_sequences()` interleaves both kinds of sequence.

`pattern_completion` (bundled, the earlier task): the pattern sits in the question itself ("cat dog cat dog ->"),
so demonstrations only show the format."""

from __future__ import annotations

import json
import random
from pathlib import Path

from pocketlm.utils import atomic_write_text

KEYS = ("cat", "dog", "ball", "tree", "sun", "bird", "fish", "hat", "box", "car", "boat", "bed", "cup", "toy")
VALUES = ("red", "blue", "green", "pink", "yellow", "big", "small", "happy", "sad", "tall", "soft", "fast",
          "slow", "hot", "cold", "old", "new")
PATTERN_WORDS = ("cat", "dog", "ball", "tree", "sun", "bird", "fish", "cake", "hat", "box", "car", "boat", "bed",
                 "cup", "toy", "park", "red", "blue", "big", "happy")
MAPPING_TASK, REPEAT_TASK, PATTERN_TASK = "key_value", "repeat_answer", "pattern_completion"
SEP = "\n\n"  # the task spec's fewshot_delimiter: training sequences are laid out like a few-shot prompt


def pair(key: str, value: str) -> str:
    """One line as the task spec renders a demonstration: text "{{key}} =", target_delimiter " ", the value."""
    return f"{key} = {value}"


def mapping_records(groups: int = 20, keys_per_group: int = 3, per_key: int = 4, seed: int = 0) -> list[dict]:
    """`groups` random key -> value mappings; `per_key` documents ask each key. Choices: the group's values and
    one value outside it, shuffled per document; `id` keeps documents distinct (few-shot drawing drops the
    scored document by equality, and must not drop its look-alikes)."""
    rng = random.Random(seed)
    records = []
    for g in range(groups):
        keys = rng.sample(KEYS, keys_per_group)
        values = rng.sample(VALUES, keys_per_group + 1)
        mapping, spare = dict(zip(keys, values)), values[-1]
        docs = [k for k in keys for _ in range(per_key)]
        rng.shuffle(docs)
        for key in docs:
            choices = [*mapping.values(), spare]
            rng.shuffle(choices)
            records.append({"id": len(records), "group": g, "key": key, "choices": choices,
                            "label": choices.index(mapping[key])})
    return records


def repeat_records(groups: int = 20, per_group: int = 12, seed: int = 0) -> list[dict]:
    """`groups` hidden answers, `per_group` documents each (random keys); choices: the answer and three values
    no document of the group shows."""
    rng = random.Random(seed)
    records = []
    for g in range(groups):
        answer, *others = rng.sample(VALUES, 4)
        for _ in range(per_group):
            choices = [answer, *others]
            rng.shuffle(choices)
            records.append({"id": len(records), "group": g, "key": rng.choice(KEYS), "choices": choices,
                            "label": choices.index(answer)})
    return records


def training_sequences(n: int, seed: int = 1, keys: tuple[int, int] = (2, 4), lines: tuple[int, int] = (6, 16)
                       ) -> list[str]:
    """`n` training sequences of "key = value" lines, blank-line separated, alternating two kinds: a fresh
    random mapping of 2-4 keys (6-16 lines in random order, every key at least once), and a fresh hidden
    value shown after 6-16 random keys."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        n_lines = rng.randint(*lines)
        if i % 2:
            value = rng.choice(VALUES)
            out.append(SEP.join(pair(rng.choice(KEYS), value) for _ in range(n_lines)))
            continue
        k = rng.randint(*keys)
        mapping = dict(zip(rng.sample(KEYS, k), rng.sample(VALUES, k)))
        shown = list(mapping) + [rng.choice(list(mapping)) for _ in range(n_lines - k)]
        rng.shuffle(shown)
        out.append(SEP.join(pair(key, mapping[key]) for key in shown))
    return out


def pattern_records(n: int = 200, seed: int = 0) -> list[dict]:
    """`n` items: a period-2 or period-3 word pattern shown for 5-8 items, the next item and 3 distractors."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        period = 2 + i % 2
        unit = rng.sample(PATTERN_WORDS, period)
        shown = rng.randint(5, 8)
        seq = [unit[k % period] for k in range(shown)]
        answer = unit[shown % period]
        others = [w for w in unit if w != answer] + rng.sample([w for w in PATTERN_WORDS if w not in unit],
                                                               4 - period + 1)
        choices = [answer] + others[:3]
        rng.shuffle(choices)
        records.append({"pattern": " ".join(seq), "choices": choices, "label": choices.index(answer)})
    return records


def write_task_data(data_root: Path, task: str, records: list[dict]) -> Path:
    """Records as JSON lines at data_root/eval/<task>/<task>.jsonl (where the bundled spec reads them)."""
    path = data_root / "eval" / task / f"{task}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))
    return path
