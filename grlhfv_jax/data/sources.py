"""Data sources: where a run's records come from, behind one interface, and the evaluation hooks
a source may offer. Training and evaluation stages see only this (tests/test_import_rules.py).

    src = roles.source(config, workdir)          # the run's source (grlhfv_jax/roles.py)
    ds = src.dataset("grm_train", seed=0, batch_size=16)   # ds[step] -> list of record dicts, endless
    recs = src.records("grm_test_id", n=200)          # the first n records, in order
    if src.hooks is not None:                         # what the source knows beyond its records
        src.hooks.oracle_score(record, answer)

Splits and record fields (docs/data.md): preference pairs (``question``, ``image``,
``response_1``, ``response_2``, ``overall_response`` in {1, 2}), prompts (``question``,
``image``), SFT examples (prompts with an ``answer``; GRM warm-start pairs with a ``judgment``).
Images are uint8 [H, W, 3]. The synthetic world (`WorldSource`) is one implementation; it
also offers `WorldHooks`: the hidden principle's oracle, the wording of an answer, and restyled
answers for a styled SFT warm start. A source without them (real data) has ``hooks = None`` and the
stages skip what needs them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np


class Hooks(Protocol):
    """Evaluation hooks: what a source knows beyond its records (the truth, for measuring)."""

    def oracle_score(self, record: Mapping[str, Any], answer: str) -> float:
        """True quality in [0, 1] of a free-text `answer` to the prompt `record`."""

    def style(self, answer: str) -> str:
        """The wording of an answer ("hedges", "praises itself", "only praises", "is plain")."""

    def restyle(self, rng: np.random.Generator, answer: str, weights: Mapping[str, float]) -> str:
        """`answer` in a style drawn from `weights` (an SFT warm start with habits to unlearn)."""

    def check_styles(self, weights: Mapping[str, float]) -> None:
        """Raises TypeError / ValueError when `weights` is not a valid style mix."""


class DataSource(Protocol):
    hooks: Hooks | None

    def dataset(self, split: str, *, seed: int, batch_size: int) -> Any:
        """Endless shuffled batches: ``ds[step]`` is a list of `batch_size` records (the same on a
        resume), this process's share of the split."""

    def records(self, split: str, n: int | None = None) -> Sequence[dict]:
        """This process's share of the first `n` records of `split` (all if None), in order."""

    def encode_image(self, image) -> bytes:
        """An image of a record as PNG bytes (for reports)."""


@dataclasses.dataclass(frozen=True)
class WorldHooks:
    """The synthetic world's truth (`data.world`): its oracle and its styles."""

    def oracle_score(self, record, answer: str) -> float:
        from grlhfv_jax.data import world

        return world.oracle_score(record["scene"], record["question"], answer)

    def style(self, answer: str) -> str:
        from grlhfv_jax.data import world

        return world.style_description(answer)

    def restyle(self, rng, answer: str, weights) -> str:
        from grlhfv_jax.data import world

        return world.restyle(rng, answer, weights)

    def check_styles(self, weights) -> None:
        self.restyle(np.random.default_rng(0), "", weights)


@dataclasses.dataclass
class WorldSource:
    """The synthetic world's splits, as the `data` stage wrote them (TFDS files read by grain)."""

    data_dir: str
    world: Any  # data.world.WorldConfig
    hooks: WorldHooks = dataclasses.field(default_factory=WorldHooks)

    def dataset(self, split: str, *, seed: int, batch_size: int):
        from grlhfv_jax.data import pipeline

        return pipeline.dataset(self.data_dir, split, self.world, seed=seed, num_epochs=None, batch_size=batch_size)

    def records(self, split: str, n: int | None = None) -> list[dict]:
        from grlhfv_jax.data import pipeline

        return pipeline.load_records(self.data_dir, split, self.world, n=n)

    def encode_image(self, image) -> bytes:
        from grlhfv_jax.data import world

        return world.encode_png(np.asarray(image, np.uint8))


def oracle_scores(
    hooks: Hooks | None, records: Sequence[Mapping], answers: Sequence[str], per_record: int = 1
) -> np.ndarray | None:
    """Oracle scores [len(answers)] of answers grouped `per_record` per record, or None without hooks."""
    if hooks is None:
        return None
    return np.array([hooks.oracle_score(records[i // per_record], a) for i, a in enumerate(answers)])
