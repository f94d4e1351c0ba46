"""What one measurement is: a `Setting` (model, backend, precision, threads, and the prompt / decode
grid), with every default in one place, and a grid of settings over backends x dtypes x threads.

Light on purpose (no torch): the CLI imports it to build requests and catch `ProfileError`.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Any, Sequence

from pocketlm.model.config import ModelConfig
from pocketlm.utils import dataclass_from_dict


class ProfileError(ValueError):
    """A profiling request that cannot run; the message names the problem and the fix."""


@dataclass(frozen=True)
class Setting:
    """One measurement, run in a fresh process. `threads` 0 means torch's default (all cores)."""

    model: str
    backend: str = "torch"  # torch | llamacpp
    dtype: str = "fp32"  # fp32 | bf16 | fp16 | int8 | int4; llamacpp also takes GGUF types (Q4_K_M, ...)
    threads: int = 0
    prompts: tuple[int, ...] = (16, 64, 256)  # prefill tests: prompt lengths
    gen: int = 64  # decode tests: tokens decoded ...
    depths: tuple[int, ...] = (0, 256)  # ... after each of these context depths
    repeat: int = 5
    warmup: int = 1
    device: str = "cpu"
    group_size: int = 32  # int4 group size
    skip_unsupported: bool = False  # int8/int4: keep layers the kernels cannot take in float
    pack: bool | None = None  # None: kernels chosen for this CPU (runtime.kernel_choice); True: oneDNN-packed
    # fp32/bf16 (fused q/k/v and gate/up); False: plain nn.Linear
    decode_step: str | None = None  # torch backend: eager | native batch-1 decode step; None: chosen per device
    compile: bool = False  # torch backend: time a torch.compile'd model (compile time reported apart)
    breakdown: bool = False  # torch backend: also time each kind of module (hooked runs)
    seed: int = 0  # random weights of catalog / config models
    draft: str | None = None  # torch backend: also time speculative decoding with this draft MODEL
    k: int = 4  # tokens the draft proposes per target forward
    gguf_dir: str | None = None  # llamacpp backend: keep the GGUF of a random-weight model here and reuse it
    gguf_file: str | None = None  # llamacpp backend: time this GGUF file (already exported from `model`) as it is

    def __post_init__(self) -> None:  # JSON and the CLI give lists; keep the setting hashable
        object.__setattr__(self, "prompts", tuple(self.prompts))
        object.__setattr__(self, "depths", tuple(self.depths))

    @property
    def longest(self) -> int:
        """The longest context any test needs: the longest prompt, or the deepest context plus `gen`."""
        return max([*self.prompts, *(d + self.gen for d in self.depths)])

    def check_request(self) -> None:
        """Counts that make no sense, with the flag to fix."""
        if not self.prompts or any(p < 1 for p in self.prompts):
            raise ProfileError("--prompt needs positive token counts, e.g. --prompt 16,64,256")
        if self.gen < 1 or not self.depths or any(d < 0 for d in self.depths):
            raise ProfileError("--gen must be >= 1 and --depth a list of context depths >= 0, e.g. --depth 0,256")
        if self.decode_step not in (None, "eager", "native"):
            raise ProfileError(f"--decode-step {self.decode_step!r}: choose native or eager (or leave it out: chosen per device)")
        if self.repeat < 1 or self.warmup < 0 or self.threads < 0:
            raise ProfileError("--repeat must be >= 1, --warmup >= 0 and --threads >= 1 (0: all cores)")

    def check_fits(self, cfg: ModelConfig) -> None:
        """The model's context length must hold the longest test."""
        if self.longest > cfg.max_seq_len:
            raise ProfileError(
                f"{cfg.name or 'model'}: a context of {self.longest} tokens (longest prompt, or depth + gen) "
                f"exceeds the model's context length {cfg.max_seq_len} (max_seq_len); use shorter --prompt / "
                "--depth / --gen.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Setting":
        return dataclass_from_dict(cls, d, error=ProfileError)


def grid(base: Setting, backends: Sequence[str] = (), dtypes: Sequence[str] = (),
         threads: Sequence[int] = ()) -> list[Setting]:
    """`base` at every (backend, dtype, threads) combination, llama-bench style; an empty axis keeps base's."""
    return [dataclasses.replace(base, backend=b, dtype=d, threads=t)
            for b, d, t in itertools.product(backends or [base.backend], dtypes or [base.dtype],
                                             threads or [base.threads])]
