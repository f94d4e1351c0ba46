"""Measure capability: task specs as data, lm-eval-exact log-likelihood scoring with shared-prefix
reuse, few-shot in-context learning, paired comparison, next-token KL, and an lm-eval adapter."""

from typing import TYPE_CHECKING

from pocketlm.lazy import lazy_exports

__all__ = ["evaluate", "load_results", "get_spec", "builtin_tasks", "TaskSpec", "TaskSpecError", "compare_results",
           "paired_bootstrap", "next_token_kl"]
__getattr__ = lazy_exports(__name__, {  # torch loads on first use, not on `pocketlm eval --help`
    "evaluate": ".runner", "load_results": ".runner", "get_spec": ".spec", "builtin_tasks": ".spec",
    "TaskSpec": ".spec", "TaskSpecError": ".spec", "compare_results": ".compare", "paired_bootstrap": ".compare",
    "next_token_kl": ".kl"})

if TYPE_CHECKING:
    from .compare import compare_results, paired_bootstrap
    from .kl import next_token_kl
    from .runner import evaluate, load_results
    from .spec import TaskSpec, TaskSpecError, builtin_tasks, get_spec
