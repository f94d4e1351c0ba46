"""Answer extraction for generated math solutions.

* GSM8K: lm-eval's filters — ``strict-match`` (the number after ``#### ``) and ``flexible-extract``
  (the last number-like span) — then exact match after ignoring commas, ``$``, everything up to
  ``#### `` and a final period, case-insensitively.
* Minerva MATH: the final answer inside the last ``\\boxed{...}`` (gold) or after
  ``Final Answer: The final answer is`` (model), normalised by the rules listed in appendix D of
  Lewkowycz et al. 2022 ("Solving Quantitative Reasoning Problems with Language Models"), then
  compared as lm-eval's ``minerva_math`` ``exact_match`` does: equal strings, or LaTeX that sympy
  parses to expressions whose difference simplifies to 0 (5 s limit). lm-eval's second metric,
  ``math_verify`` (the math-verify package), is not computed.
"""

from __future__ import annotations

import re

INVALID = "[invalid]"


def regex_extract(text: str, pattern: str, group_select: int = 0, fallback: str = INVALID) -> str:
    """The ``group_select``-th match of ``pattern`` (first non-empty group if it has several), stripped."""
    matches = re.findall(pattern, text)
    if not matches:
        return fallback
    match = matches[group_select]
    if isinstance(match, tuple):
        nonempty = [m for m in match if m]
        match = nonempty[0] if nonempty else fallback
    return match.strip()


def exact_match(prediction: str, reference: str, *, regexes_to_ignore: list[str] = (),
                ignore_case: bool = False, ignore_punctuation: bool = False) -> bool:
    """String equality after deleting ``regexes_to_ignore`` from both sides (in order)."""
    for pattern in regexes_to_ignore:
        prediction = re.sub(pattern, "", prediction)
        reference = re.sub(pattern, "", reference)
    if ignore_case:
        prediction, reference = prediction.lower(), reference.lower()
    if ignore_punctuation:
        import string
        table = str.maketrans("", "", string.punctuation)
        prediction, reference = prediction.translate(table), reference.translate(table)
    return prediction == reference


# ---------------------------------------------------------------- Minerva (MATH)

def final_boxed_answer(solution: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (balanced braces) or ``\\boxed x``; None if absent."""
    if "\\boxed " in solution:
        return solution.split("\\boxed ")[-1].split("$")[0]
    start = solution.rfind("\\boxed")
    if start < 0:
        start = solution.rfind("\\fbox")
        if start < 0:
            return None
    depth = 0
    for i in range(start, len(solution)):
        if solution[i] == "{":
            depth += 1
        elif solution[i] == "}":
            depth -= 1
            if depth == 0:
                inner = solution[start:i + 1]
                return inner[inner.index("{") + 1:-1]
    return None


def stated_final_answer(generation: str) -> str:
    """The text after 'Final Answer: The final answer is' up to '. I hope it is correct.'."""
    m = re.search(r"Final Answer: The final answer is(.*?). I hope it is correct.",
                  generation + "I hope it is correct.")
    return m.group(1).strip() if m else "[invalidanswer]"


# appendix D of Lewkowycz et al. (2022): textual substitutions, then unit/filler words removed
_SUBSTITUTIONS = [("an ", ""), ("a ", ""), (".$", "$"), ("\\$", ""), (r"\ ", ""), (" ", ""),
                  ("mbox", "text"), (",\\text{and}", ","), ("\\text{and}", ","), ("\\text{m}", "\\text{}")]
_REMOVED = ["square", "ways", "integers", "dollars", "mph", "inches", "ft", "hours", "km", "units",
            "\\ldots", "sue", "points", "feet", "minutes", "digits", "cents", "degrees", "cm", "gm",
            "pounds", "meters", "meals", "edges", "students", "childrentickets", "multiples", "\\text{s}",
            "\\text{.}", "\\text{\ns}", "\\text{}^2", "\\text{}^3", "\\text{\n}", "\\text{}", r"\mathrm{th}",
            r"^\circ", r"^{\circ}", r"\;", r",\!", "{,}", '"', "\\dots"]


def normalize_final_answer(answer: str) -> str:
    """Canonical form of a final answer so equal answers compare equal as strings."""
    answer = answer.split("=")[-1]
    words = [w for w in _REMOVED if w.isalpha()]
    for w in words:  # unit words while spaces still delimit them (never inside a \command)
        answer = re.sub(rf"(?<!\\)\b{w}\b", "", answer)
    for before, after in _SUBSTITUTIONS:
        answer = answer.replace(before, after)
    for w in _REMOVED:
        if w.isalpha():
            parts = re.split(r"(\\[a-zA-Z]+)", answer)
            answer = "".join(p if k % 2 else p.replace(w, "") for k, p in enumerate(parts))
        else:
            answer = answer.replace(w, "")
    answer = re.sub(r"(.*?)(\$)(.*?)(\$)(.*)", "$\\3$", answer)
    for command in ("text", "textbf", "overline"):
        answer = re.sub(r"(\\" + command + r"\{)(.*?)(\})", "\\2", answer)
    answer = re.sub(r"(\\boxed\{)(.*)(\})", "\\2", answer)
    answer = re.sub(r"(frac)([^{])(.)", "frac{\\2}{\\3}", answer)
    answer = re.sub(r"(sqrt)(\[[^\]]*\])(\w)", "\\1\\2{\\3}", answer)
    answer = re.sub(r"(sqrt)(?!\[)([^{])", "sqrt{\\2}", answer)
    answer = answer.replace("$", "")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+", answer):
        answer = answer.replace(",", "")
    return answer


def is_equiv(a: str, b: str, timeout_s: int = 5) -> bool:
    """Two normalised LaTeX answers are the same: identical, or sympy finds ``a - b`` simplifies to 0.

    Anything sympy cannot parse, subtract or simplify within `timeout_s` counts as different, as in
    lm-eval (tuples, intervals and matrices therefore only match as identical strings).
    """
    if a and a == b:
        return True
    import signal
    import threading

    import sympy
    from sympy.parsing.latex import parse_latex

    def _compare() -> bool:
        try:
            diff = parse_latex(a) - parse_latex(b)
            return bool(sympy.simplify(diff) == 0)
        except ImportError:
            raise
        except Exception:  # noqa: BLE001 - unparsable or unsimplifiable answers are simply not equal
            return False

    if threading.current_thread() is not threading.main_thread():
        return _compare()

    def _expired(signum, frame):
        raise TimeoutError

    previous = signal.signal(signal.SIGALRM, _expired)
    signal.alarm(timeout_s)
    try:
        return _compare()
    except TimeoutError:
        return False
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def minerva_equal(generation: str, gold_answer: str) -> bool:
    """Minerva exact match: the normalised stated answer is equivalent to the normalised gold (is_equiv)."""
    return is_equiv(normalize_final_answer(stated_final_answer(generation)), gold_answer)
