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
    return Codec.from_dirs(paths["tokenizer_dir"], config.image, config.grm_template or None)


def image_processor(image):
    """The image processor of `config.image` (a validated section, `config.sections.IMAGE`)."""
    return processing.load_image_processor(
        image.processor_dir, min_pixels=image.min_pixels, max_pixels=image.max_pixels,
        patch_size=image.patch_size, merge_size=image.merge_size, temporal_patch_size=image.temporal_patch_size)


def runtime(spec, config=None) -> dict:
    """The runtime choices of a `config.model.*` entry as `models` keywords: dtype, param_dtype,
    remat, remat_policy, logits_chunk, vision_chunk, scan_layers, scan_vision, and vision_block (None: the most patches of one frame `config.image`'s processor makes,
    so the tower attends per frame, linear in the number of images; dense without `config`). `spec`
    and `config`: validated (`config.validate`, `config.typed_section`)."""
    block = spec.vision_block
    if block is None:
        block = 0 if config is None else processing.max_frame_patches(image_processor(config.image))
    return dict(dtype=DTYPES[spec.dtype], param_dtype=DTYPES[spec.param_dtype], remat=bool(spec.remat),
                remat_policy=str(spec.remat_policy), logits_chunk=int(spec.logits_chunk), vision_block=int(block),
                vision_chunk=int(spec.vision_chunk), scan_layers=bool(spec.scan_layers),
                scan_vision=bool(spec.scan_vision))


def mesh_from_config(config):
    """The run's device mesh over ("data", "fsdp", "tensor") from `config.mesh_shape`."""
    return sharding.make_mesh(tuple(config.mesh_shape))


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
    def from_dirs(cls, tokenizer_dir: str, image, grm_template: str | None = None) -> "Codec":
        """`image`: a validated image section (`config.image`), or a dict of its keys (the entry points
        serve.py, evaluate.py and tests: checked here against config.sections.IMAGE)."""
        if not isinstance(image, config_schema.Frozen):
            image = config_schema.typed_section(sections.IMAGE, image, "image")
        tok = processing.load_tokenizer(tokenizer_dir)
        proc = image_processor(image)
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
    first (the row layout of `steps.bt_rm_step` and `steps.dpo_step`)."""
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
                mesh=None, config=None):
    """A model: loaded from `from_path` (an HF folder written by an earlier stage), else from
    `spec.path` (a real checkpoint), else randomly initialised from `spec.hf_config`; with the
    runtime choices of `spec` (`runtime`; vision_block from `config.image`, else dense)."""
    rt = runtime(spec, config)
    path = from_path or spec.path
    if path:
        model = models.load_pretrained(path, mesh=mesh, scalar_head=scalar_head, **rt)
    else:
        model = models.from_config(model_config(spec, codec), rngs=nnx.Rngs(seed), scalar_head=scalar_head, **rt)
        if mesh is not None:
            sharding.shard_model(model, mesh)
    return model


def engine_rollout(model, codec: Codec, *, frozen: bool = False):
    """The KV-cache engine as a `rollout.Rollout` for `model`, with the codec's EOS and pad ids."""
    from grlhfv_jax.rollout import EngineRollout
    engine = EngineRollout(model, eos_token_id=codec.eos_id, pad_token_id=codec.pad_id, frozen=frozen)
    return HostRowsRollout(engine) if jax.process_count() > 1 else engine


class HostRowsRollout:
    """Several processes: a `rollout.Rollout` whose callers hand it this host's prompt rows and get
    this host's output rows back, while the engine samples the global batch. The hosts' prompts are
    gathered host-side in process order (`sharding.gather_batch`: the rows and their images; host p's
    rows are block p), the engine runs on that global batch (its arrays placed over the whole mesh),
    the outputs come back to every host (`sharding.host_values`) and each keeps its block of rows
    (prompt p's samples stay together: block p of the prompts is block p of the rows). Every host
    must call `generate` for the same number of equally sized batches (it runs collectives).
    A call that is part `first_row` of a sample of `total_rows` rows (per host) draws rows from the
    global sample of `total_rows * process_count` rows starting at `first_row * process_count`: no
    row shares another's draws, though a run split into several calls draws other values than one
    process does (one call: the same as one process)."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def generate(self, batch: dict, params):
        from grlhfv_jax.rollout import GenerationOutput
        count = jax.process_count()
        rows = int(np.shape(batch["input_ids"])[0])
        if int(params.total_rows or 0):
            params = params.replace(first_row=int(params.first_row) * count, total_rows=int(params.total_rows) * count)
        out = sharding.host_values(tuple(self.inner.generate(sharding.gather_batch(batch), params)))
        n = out[0].shape[0] // (rows * count)   # samples per prompt
        sl = sharding.process_slice(out[0].shape[0])
        assert sl.stop - sl.start == rows * n
        return GenerationOutput(*(np.asarray(x)[sl] for x in out))


def sample_groups(rollout, codec: Codec, examples: list[dict], *, max_len: int, params, num_calls: int = 1):
    """Samples `params.num_samples` responses per prompt example (rows grouped by prompt) from any
    `rollout.Rollout`, in `num_calls` calls of len(examples) / num_calls whole prompt groups each
    (memory: the prefill and KV cache of one call), joined in prompt order (`join_outputs`).
    Each call gets its rows' place in the step (`params.first_row`, `total_rows`): the engine draws
    for every row what one call would, so any `num_calls` samples what one call samples.

    Returns (left-padded prompt batch of all examples, GenerationOutput [P * num_samples, ...] with
    responses cut before any image or vision token, decoded texts)."""
    from grlhfv_jax.trainers import grpo as learner
    P, n = len(examples), int(params.num_samples)
    if num_calls < 1 or P % num_calls:
        raise ValueError(f"sample_groups: num_calls = {num_calls} must divide the {P} prompts")
    prompts = batch(examples, codec, side="left", max_len=max_len)
    if num_calls == 1:
        out = rollout.generate(prompts, params)
    else:
        per = P // num_calls
        out = join_outputs([rollout.generate(batch(examples[s:s + per], codec, side="left", max_len=max_len),
                                             params.replace(first_row=s * n, total_rows=P * n))
                            for s in range(0, P, per)], pad_id=codec.pad_id)
    gen = learner.cut_at_tokens(out, codec.banned_ids())
    return prompts, gen, codec.decode(np.asarray(gen.tokens), np.asarray(gen.lengths))


def join_outputs(outs: Sequence, *, pad_id: int):
    """GenerationOutputs of consecutive row blocks -> one (numpy), rows in order; tokens [N_i, W_i]
    right-padded with `pad_id` and logprobs with 0 to the widest W_i; lengths, finished [sum N_i]."""
    from grlhfv_jax.rollout import GenerationOutput
    width = max(np.asarray(o.tokens).shape[1] for o in outs)

    def pad(x, value):
        x = np.asarray(x)
        return np.pad(x, ((0, 0), (0, width - x.shape[1])), constant_values=value)

    return GenerationOutput(np.concatenate([pad(o.tokens, pad_id) for o in outs]),
                            np.concatenate([pad(o.logprobs, 0.0) for o in outs]),
                            np.concatenate([np.asarray(o.lengths) for o in outs]),
                            np.concatenate([np.asarray(o.finished) for o in outs]))


def load_stage_output(path: str, hint: str, config=None, spec=None, *, scalar_head: bool = False):
    """Loads an HF folder an earlier stage wrote, in the dtypes of `spec` (a `config.model.*`
    entry; None: the models' defaults) and sharded over the config's mesh; a missing folder is an
    error naming what writes it."""
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"{path} is missing: {hint}")
    mesh = mesh_from_config(config) if config is not None else None
    rt = runtime(spec, config) if spec is not None else {}
    return models.load_pretrained(path, mesh=mesh, scalar_head=scalar_head, **rt)
