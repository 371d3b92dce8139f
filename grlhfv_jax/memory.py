"""What a stage holds in memory, as each stage declares it (`memory_phases(config, section)` at the end
of each stage module) and the dry run (`dry_run.plan_stage`) prices it: the models whose parameters
it holds, the one it trains, and the phases of a step (one jitted call each, one after the other:
the peak is the largest), in rows and tokens. Nothing here knows a model's shape or a stage."""

from __future__ import annotations

import dataclasses

GRM_TEMPLATE_TOKENS = 384  # the paper's GRM template is ~330 tokens with Qwen's tokenizer (docs/data.md)


@dataclasses.dataclass(frozen=True)
class Model:
    """A `config.model` entry (`role`), with a scalar head (a score-only RM) or not."""

    role: str
    scalar: bool = False


@dataclasses.dataclass(frozen=True)
class Phase:
    """One jitted call of `model`: a forward (+ backward) over `rows` x `tokens` with the LM head over
    its last `window` columns (0: none), `queries` new tokens over a cached prefix (None: all);
    the vision tower over `images` images (with the backward, trained unless the stage freezes it;
    `sampler`: in the sampler's own calls, `vision_chunk` worth at a time, before the prefill, so
    the larger of the two is live); and a KV cache of `kv_rows` x `kv_tokens`."""

    name: str
    model: Model
    rows: int
    tokens: int
    window: int
    backward: bool = False
    queries: int | None = None
    images: int = 0
    sampler: bool = False
    kv_rows: int = 0
    kv_tokens: int = 0


@dataclasses.dataclass(frozen=True)
class Memory:
    """A stage's memory: `held` models (parameters), the `trained` one (gradients and optimizer,
    less its `freeze` prefixes) and any `also_trained` beside it (PPO's critic), its `phases` and
    the notes the dry run prints."""

    held: tuple[Model, ...]
    trained: Model
    freeze: tuple[str, ...]
    phases: tuple[Phase, ...]
    notes: tuple[str, ...] = ()
    also_trained: tuple[Model, ...] = ()


def rl_phases(sec, model: Model, prompts: int, group: int, tokens: int) -> list[Phase]:
    """The phases of a GRPO step (trainers.grpo) of `prompts` prompts x `group` samples, rows of
    `tokens` (prompt + bucketed answer): the sampler calls, the reference pass and one training
    micro-batch; each micro-batch runs the tower over its own prompts' images, once per prompt."""
    rows = prompts * group
    calls = sec.rollout_num_micro_batches
    call_prompts, call_rows = prompts // calls, rows // calls
    ref_rows = rows // sec.ref_num_micro_batches
    micro = rows // (sec.mini_batches * sec.num_micro_batches)
    return [
        Phase(
            f"rollout ({calls} call{'s' if calls > 1 else ''}): prefill of {call_prompts} prompts x {sec.max_len} "
            f"tokens + cache of {call_rows} rows x {tokens}",
            model,
            call_prompts,
            sec.max_len,
            1,
            images=call_prompts,
            sampler=True,
            kv_rows=call_rows,
            kv_tokens=tokens,
        ),
        Phase(
            f"reference pass: {ref_rows} rows x {tokens} tokens, tower over {ref_rows // group} images",
            model,
            ref_rows,
            tokens,
            sec.max_new_tokens,
            images=ref_rows // group,
        ),
        Phase(
            f"train micro-batch: {micro} rows x {tokens} tokens, tower over {micro // group} images",
            model,
            micro,
            tokens,
            sec.max_new_tokens,
            backward=True,
            images=micro // group,
        ),
    ]
