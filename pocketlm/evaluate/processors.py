"""Named document processors a spec can apply to a split (``process: NAME``) — for the few
benchmarks whose lm-eval form needs more than field templates (HellaSwag text clean-up, MATH answers)."""

from __future__ import annotations

import re
from typing import Callable

from .math_answers import final_boxed_answer, normalize_final_answer


def _hellaswag_clean(text: str) -> str:
    """lm-eval's HellaSwag clean-up: strip, WikiHow ' [title]' -> '. ', drop [..] tags, squeeze double spaces."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def hellaswag(doc: dict) -> dict:
    """Original HellaSwag record (activity_label, ctx_a, ctx_b, endings, label) -> query/choices/label."""
    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    return {"query": _hellaswag_clean(doc["activity_label"] + ": " + ctx),
            "choices": [_hellaswag_clean(e) for e in doc["endings"]], "label": int(doc["label"])}


_SENTENCE_END = re.compile(r"[.!?]\"?\s")


def split_hellaswag_context(text: str) -> dict:
    """Recover activity_label / ctx_a / ctx_b from llama.cpp's ``label: ctx_a ctx_b`` line.

    The text file joins ctx_a and ctx_b with a space and keeps ctx_b lower-case, while lm-eval
    capitalises ctx_b. ctx_b is the unfinished sentence after ctx_a's last sentence end; it is empty
    when the context itself ends a sentence (most WikiHow items).
    """
    label, _, ctx = text.partition(": ")
    ctx = ctx.strip()
    if not ctx or ctx[-1] in ".!?\"'":
        return {"activity_label": label, "ctx_a": ctx, "ctx_b": ""}
    ends = list(_SENTENCE_END.finditer(ctx))
    if not ends:
        return {"activity_label": label, "ctx_a": "", "ctx_b": ctx}
    cut = ends[-1].end()
    return {"activity_label": label, "ctx_a": ctx[:cut].rstrip(), "ctx_b": ctx[cut:]}


def hellaswag_txt(doc: dict) -> dict:
    """llama.cpp text item (ctx, endings, label) -> the lm-eval query/choices/label."""
    parts = split_hellaswag_context(doc["ctx"])
    if not parts["ctx_a"]:  # lm-eval would give ' ' + ctx_b.capitalize(); the leading space is stripped
        parts["ctx_a"] = ""
    return hellaswag({**parts, "endings": doc["endings"], "label": doc["label"]})


def minerva_math(doc: dict) -> dict:
    """MATH record (problem, solution) -> adds ``answer``, the normalised boxed final answer."""
    boxed = final_boxed_answer(doc["solution"])
    return {**doc, "answer": normalize_final_answer(boxed) if boxed is not None else ""}


PROCESSORS: dict[str, Callable[[dict], dict]] = {
    "hellaswag": hellaswag,
    "hellaswag_txt": hellaswag_txt,
    "minerva_math": minerva_math,
}
