"""What every stage needs: the tokenizer/image codec, models from config, static-shape batches.

Batches have fixed shapes (`max_len` from the config, a fixed number of rows) so that each
jitted function compiles once per stage.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from grlhfv_jax import config as config_schema
from grlhfv_jax import models, processing, sharding
from grlhfv_jax.config import sections
from grlhfv_jax.rl import grm_reward

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def stage_dir(workdir: str, name: str) -> str:
    path = os.path.join(workdir, name)
    os.makedirs(path, exist_ok=True)
    return path


def codec(config, workdir: str) -> "Codec":
    """The codec of a run: the tokenizer written by the `data` stage, config.image, config.grm_template."""
    from grlhfv_jax.stages import data as data_stage
    paths = data_stage.paths(config, workdir)
    config = config_schema.section(config)
    return Codec.from_dirs(paths["tokenizer_dir"], config.image, config.grm_template or None)


def mesh_from_config(config):
    """The run's device mesh over ("data", "fsdp", "tensor") from `config.mesh_shape`."""
    return sharding.make_mesh(tuple(config_schema.section(config).mesh_shape))


# ----------------------------------------------------------------------------- text and images


@dataclasses.dataclass
class Codec:
    """Tokenizer + image processor + the ids the stages need."""

    tokenizer: Any
    image_processor: Any
    pad_id: int
    eos_id: int  # <|im_end|>: ends an assistant turn
    grm_template: str = grm_reward.GRM_TEMPLATE

    @classmethod
    def from_dirs(cls, tokenizer_dir: str, image: dict, grm_template: str | None = None) -> "Codec":
        tok = processing.load_tokenizer(tokenizer_dir)
        image = config_schema.section(image, sections.IMAGE)
        proc = processing.load_image_processor(
            image.processor_dir, min_pixels=image.min_pixels, max_pixels=image.max_pixels,
            patch_size=image.patch_size, merge_size=image.merge_size, temporal_patch_size=image.temporal_patch_size)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.convert_tokens_to_ids("<|endoftext|>")
        return cls(tok, proc, int(pad), int(tok.convert_tokens_to_ids(processing.IM_END)),
                   grm_template or grm_reward.GRM_TEMPLATE)

    def special_ids(self) -> dict:
        c = self.tokenizer.convert_tokens_to_ids
        return {"image_token_id": c(processing.IMAGE_PAD), "vision_start_token_id": c(processing.VISION_START),
                "vision_end_token_id": c(processing.VISION_END), "video_token_id": c("<|video_pad|>"),
                "eos_token_id": self.eos_id, "pad_token_id": self.pad_id}

    def banned_ids(self) -> list[int]:
        """Token ids a response must not contain (image and vision markers)."""
        ids = self.special_ids()
        return [ids[k] for k in ("image_token_id", "vision_start_token_id", "vision_end_token_id", "video_token_id")]

    def example(self, question: str, image, response: str | None = None) -> dict:
        text = processing.chat_prompt(question, num_images=1, tokenizer=self.tokenizer)
        return processing.encode_example(self.tokenizer, self.image_processor, text, [image], response)

    def grm_user_text(self, question: str, response_1: str, response_2: str) -> str:
        return grm_reward.build_grm_prompt(question, response_1, response_2, template=self.grm_template)

    def grm_example(self, question: str, image, response_1: str, response_2: str,
                    judgment: str | None = None) -> dict:
        return self.example(self.grm_user_text(question, response_1, response_2), image, judgment)

    def decode(self, tokens: np.ndarray, lengths: np.ndarray) -> list[str]:
        """Generated token rows -> text, cut at each row's length, special tokens dropped."""
        return [self.tokenizer.decode([int(t) for t in row[:n] if t != self.eos_id], skip_special_tokens=True)
                for row, n in zip(np.asarray(tokens), np.asarray(lengths))]


def batch(examples: Sequence[dict], codec: Codec, *, side: str, max_len: int, rows: int | None = None) -> dict:
    """Collates `examples` to [rows, max_len]; missing rows repeat example 0 with a zero loss mask.

    The fill rows keep every shape static (their forward is well defined; callers ignore their
    outputs and mask them out of losses). Returns numpy arrays plus `valid [rows]` (1 for real rows).
    """
    rows = rows or len(examples)
    if len(examples) > rows:
        raise ValueError(f"batch: {len(examples)} examples > {rows} rows")
    fill = rows - len(examples)
    out = processing.collate(list(examples) + [examples[0]] * fill, pad_id=codec.pad_id, side=side,
                             max_len=max_len)
    valid = np.array([1] * len(examples) + [0] * fill, np.int32)
    if fill:  # fill rows: real tokens (well-defined forward), no loss, ignored outputs
        out["loss_mask"][len(examples):] = 0
    out["valid"] = valid
    out.pop("mm_token_type_ids", None)
    return out


def pair_examples(codec: Codec, records: Sequence[dict]) -> list[dict]:
    """Interleaved (chosen, rejected) examples of preference records: the human label's answer
    first (the row layout of `train.bt_rm_step` and `train.dpo_step`)."""
    ex = []
    for r in records:
        w, l = ("response_1", "response_2") if int(r["overall_response"]) == 1 else ("response_2", "response_1")
        ex += [codec.example(r["question"], r["image"], r[w]), codec.example(r["question"], r["image"], r[l])]
    return ex


# ----------------------------------------------------------------------------- models


def model_config(spec, codec: Codec) -> dict:
    """The HF config dict of a model to initialise randomly: `spec.hf_config` with the tokenizer's
    vocabulary size and special ids filled in."""
    hf = spec.hf_config.to_dict() if hasattr(spec.hf_config, "to_dict") else dict(spec.hf_config)
    ids = codec.special_ids()
    text = dict(hf.get("text_config", {}))
    text.update(vocab_size=len(codec.tokenizer), eos_token_id=ids["eos_token_id"], pad_token_id=ids["pad_token_id"])
    hf["text_config"] = text
    for k in ("image_token_id", "vision_start_token_id", "vision_end_token_id", "video_token_id"):
        hf[k] = ids[k]
    return hf


def new_or_load(spec, codec: Codec, *, seed: int, scalar_head: bool = False, from_path: str | None = None,
                mesh=None):
    """A model: loaded from `from_path` (an HF folder written by an earlier stage), else from
    `spec.path` (a real checkpoint), else randomly initialised from `spec.hf_config`."""
    spec = config_schema.section(spec, sections.MODEL)
    dtype = DTYPES[spec.dtype]  # compute dtype
    param_dtype = DTYPES[spec.param_dtype]  # master weights
    path = from_path or spec.path
    if path:
        model = models.load_pretrained(path, dtype=dtype, param_dtype=param_dtype, mesh=mesh,
                                       scalar_head=scalar_head)
    else:
        model = models.from_config(model_config(spec, codec), rngs=nnx.Rngs(seed), dtype=dtype,
                                   param_dtype=param_dtype, scalar_head=scalar_head,
                                   remat=bool(spec.remat))
        if mesh is not None:
            sharding.shard_model(model, mesh)
    return model


def sample_groups(model, codec: Codec, examples: list[dict], *, max_len: int, max_new_tokens: int,
                  temperature: float, num_samples: int, seed: int):
    """Samples `num_samples` responses per prompt example (rows grouped by prompt).

    Returns (left-padded prompt batch, GenerationOutput with responses cut before any image or
    vision token, decoded texts)."""
    from grlhfv_jax.rollout import generate
    from grlhfv_jax.stages import rollouts
    prompts = batch(examples, codec, side="left", max_len=max_len)
    gen = generate(model, prompts, max_new_tokens=max_new_tokens, temperature=float(temperature),
                   eos_token_id=codec.eos_id, num_samples=num_samples, rng=jax.random.key(seed),
                   pad_token_id=codec.pad_id)
    gen = rollouts.cut_at_tokens(gen, codec.banned_ids())
    return prompts, gen, codec.decode(np.asarray(gen.tokens), np.asarray(gen.lengths))


def load_stage_output(path: str, hint: str, config=None, spec=None, *, scalar_head: bool = False):
    """Loads an HF folder an earlier stage wrote, in the dtypes of `spec` (a `config.model.*`
    entry) and sharded over the config's mesh; a missing folder is an error naming what writes it."""
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"{path} is missing: {hint}")
    spec = config_schema.section(spec or {}, sections.MODEL)
    mesh = mesh_from_config(config) if config is not None else None
    return models.load_pretrained(path, dtype=DTYPES[spec.dtype], param_dtype=DTYPES[spec.param_dtype], mesh=mesh,
                                  scalar_head=scalar_head)


# ----------------------------------------------------------------------------- training loop


def make_train_state(model, opt_cfg, total_steps: int):
    """TrainState with AdamW + warm-up/cosine + clipping from a config section with `lr`,
    `warmup_ratio`, `weight_decay`, `max_grad_norm`."""
    from grlhfv_jax.rl import optim, train
    opt_cfg = config_schema.section(opt_cfg, sections.OPTIMIZER)
    tx, schedule = optim.make_optimizer(
        learning_rate=float(opt_cfg.lr), total_steps=max(int(total_steps), 1),
        warmup_ratio=float(opt_cfg.warmup_ratio), weight_decay=float(opt_cfg.weight_decay),
        max_grad_norm=float(opt_cfg.max_grad_norm))
    frozen = tuple(opt_cfg.freeze or ())
    if frozen:
        tx = freeze_params(tx, frozen)
    state = train.TrainState(model, tx, schedule)
    mesh = sharding.model_mesh(model)
    if mesh is not None:  # optimizer state (incl. its step counter) on the model's mesh, as a restore puts it
        sharding.shard_model(state.optimizer, mesh)
    return state


def make_rl_train_state(model, sec):
    """TrainState for an RL stage: its schedule counts optimizer updates, `sec.mini_batches` per RL
    step, so the learning rate decays over all `sec.steps` RL steps."""
    return make_train_state(model, sec, int(sec.steps) * int(sec.mini_batches))


def freeze_params(tx, prefixes: tuple[str, ...]):
    """`tx` on every parameter except those whose path starts with one of `prefixes` (e.g.
    "visual": the vision tower, as VLM recipes that keep a pretrained ViT fixed), which get zero
    updates."""
    import optax

    def labels(params):
        def label(path, _):
            name = ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
            return "frozen" if any(name == p or name.startswith(p + ".") for p in prefixes) else "train"
        return jax.tree_util.tree_map_with_path(label, params)

    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


class NonFiniteLossError(FloatingPointError):
    """A training loss became NaN/inf; the last good checkpoint is kept."""


class ResumeError(RuntimeError):
    """A stage's checkpoint cannot be restored; the message names the stage, the folder and the fix."""


def train_loop(name: str, state, *, steps: int, make_batch, step_fn, writer, ckpt_dir: str,
               log_every: int = 10, ckpt_every: int = 50, on_log=None) -> dict:
    """Runs `steps` updates, resuming from the newest checkpoint in `ckpt_dir`.

    make_batch(step) -> batch dict (deterministic in `step`, so a resumed run sees the same data);
    step_fn(state, batch) -> (state, metrics). Logs every `log_every` steps under stage `name`,
    checkpoints every `ckpt_every` steps and at the end. Each checkpoint also holds the last logged
    metrics and those gathered since, so a run resumed from any checkpoint (even the final one:
    then no step runs) returns exactly what an uninterrupted run returns. A non-finite loss stops
    the run with an error naming the step; the last checkpoint (before the bad step) is kept.
    Returns the last logged metrics (floats).
    """
    from grlhfv_jax.checkpoint import Checkpointer
    from grlhfv_jax.metrics import progress

    ckpt = Checkpointer(ckpt_dir, max_to_keep=1)
    try:
        restored = ckpt.restore_latest(state.model, state.optimizer)
    except Exception as e:  # a corrupt or foreign checkpoint: say where and what to do, delete nothing
        ckpt.close()
        raise ResumeError(
            f"[{name}] cannot resume from the checkpoint in {ckpt_dir}: {type(e).__name__}: {e}. "
            f"Delete {ckpt_dir} to redo this part of the stage from its start (finished stages are kept), "
            "or use --restart to redo the whole run.") from e
    start, extra = restored if restored is not None else (0, {})
    if restored is not None:
        print(f"[{name}] resuming at step {start}/{steps} from {ckpt_dir}", flush=True)
    last: dict = dict(extra.get("last", {}))
    acc: dict[str, list] = {k: list(v) for k, v in extra.get("acc", {}).items()}

    def save(step):
        ckpt.save(step, state.model, state.optimizer,
                  extra={"last": last, "acc": {k: [float(x) for x in v] for k, v in acc.items()}})

    bar = progress(range(start, steps), total=steps, desc=name, initial=start)
    try:
        for step in bar:
            batch = make_batch(step)
            state, metrics = step_fn(state, batch)
            if "loss" in metrics and not np.isfinite(float(metrics["loss"])):
                ckpt.wait()
                raise NonFiniteLossError(
                    f"[{name}] non-finite loss ({float(metrics['loss'])}) at step {step + 1}; the last checkpoint "
                    f"({ckpt.latest_step()}) in {ckpt_dir} is kept. Lower the learning rate or check the data.")
            for k, v in metrics.items():
                acc.setdefault(k, []).append(v)
            if (step + 1) % log_every == 0 or step + 1 == steps:
                last = {k: float(np.mean([float(x) for x in v])) for k, v in acc.items()}
                acc = {}
                if on_log is not None:
                    last.update(on_log(step + 1) or {})
                writer.write(name, step + 1, last)
                bar.set_postfix({k: f"{v:.3g}" for k, v in list(last.items())[:4]})
            if (step + 1) % ckpt_every == 0 and step + 1 < steps:
                save(step + 1)
        if start < steps:  # resumed from the final checkpoint: it is already there
            save(steps)
    finally:
        bar.close()
        ckpt.close()  # waits for an in-flight save: a crash never leaves half a checkpoint behind
    return last
