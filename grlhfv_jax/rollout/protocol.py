"""What the stages call to sample and to judge: one value for the sampling settings and two
protocols. The KV-cache engine implements both (`EngineRollout`, `rollout.grm_judge.GRMJudge`); a
second implementation (a remote OpenAI-compatible judge, a test double) plugs in by implementing
the protocol, without touching stage code.

    Rollout.generate(batch, params) -> GenerationOutput      token ids in, token ids out (RL needs them)
    Judge.judge(items, params) -> [text]                      (question, image, response_1, response_2)
    Judge.judge_groups(groups, params) -> [[text]]            (question, image, [(r1, r2), ...])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol, runtime_checkable


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How to sample. max_new_tokens: tokens per response; temperature: 0 = greedy; top_p in
    (0, 1]; top_k: 0 = off; num_samples: responses per prompt (rows grouped by prompt); seed: the
    sampler's random key (implementations derive one per chunk from it); first_row, total_rows:
    the batch's output rows are rows first_row .. of a sample of total_rows rows (0: the batch's own)
    drawn in several calls; the engine then draws for each row what one call over all rows would."""

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    num_samples: int = 1
    seed: int = 0
    first_row: int = 0
    total_rows: int = 0

    def __post_init__(self):
        if int(self.max_new_tokens) < 1:
            raise ValueError(f"SamplingParams.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if int(self.num_samples) < 1:
            raise ValueError(f"SamplingParams.num_samples must be >= 1, got {self.num_samples}")
        if float(self.temperature) < 0:
            raise ValueError(f"SamplingParams.temperature must be >= 0, got {self.temperature}")
        if not 0.0 < float(self.top_p) <= 1.0:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}")
        if int(self.top_k) < 0:
            raise ValueError(f"SamplingParams.top_k must be >= 0, got {self.top_k}")
        if int(self.first_row) < 0 or int(self.total_rows) < 0:
            raise ValueError(
                f"SamplingParams.first_row / total_rows must be >= 0, got {self.first_row} / {self.total_rows}"
            )

    def replace(self, **kw) -> SamplingParams:
        return dataclasses.replace(self, **kw)


@runtime_checkable
class Rollout(Protocol):
    """Samples continuations of a left-padded prompt batch (`input_ids`, `attention_mask`
    [B, T], optional `pixel_values`, `image_grid_thw`): a `GenerationOutput` with
    B * num_samples rows (tokens, per-token log-probs, lengths, finished)."""

    def generate(self, batch: dict, params: SamplingParams): ...


@runtime_checkable
class Judge(Protocol):
    """A generative judge: one text judgment (criteria, analysis, \\boxed{s1, s2}) per pair."""

    def judge(self, items: Sequence[tuple], params: SamplingParams) -> list[str]:
        """items: (question, image, response_1, response_2); texts in order."""

    def judge_groups(self, groups: Sequence[tuple], params: SamplingParams) -> list[list[str]]:
        """groups: (question, image, [(response_1, response_2), ...]) sharing question and
        image (stage 2's grouped comparison); texts per group, per pair."""
