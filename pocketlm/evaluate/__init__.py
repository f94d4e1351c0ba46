"""Measure capability: task specs as data, lm-eval-exact log-likelihood scoring with shared-prefix
reuse, few-shot in-context learning, paired comparison, next-token KL, and an lm-eval adapter."""

from .compare import compare_results, paired_bootstrap
from .kl import next_token_kl
from .runner import evaluate, load_results
from .spec import TaskSpec, TaskSpecError, builtin_tasks, get_spec

__all__ = ["evaluate", "load_results", "get_spec", "builtin_tasks", "TaskSpec", "TaskSpecError", "compare_results",
           "paired_bootstrap", "next_token_kl"]
