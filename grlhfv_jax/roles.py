"""The roles a stage builds from the config and the workdir: the run's codec and data source,
models (new, loaded, or an earlier stage's output), the trainee and its reference, the trained
GRM, the score-only RM, the stage-2 judge; and where each stage writes its outputs. One module,
so that no stage imports another stage.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
from flax import nnx

from grlhfv_jax import models, processing, sharding
from grlhfv_jax.data import sources
from grlhfv_jax.data import world as W
from grlhfv_jax.data.world.config import from_section
from grlhfv_jax.encoding import Codec, image_processor
from grlhfv_jax.rollout import Judge
from grlhfv_jax.rollout.grm_judge import GRMJudge

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
EVAL_SAMPLE_SEED = 17  # + config.seed: the rng of sampled answers the evaluate and nscale stages score

# Where each stage writes its model (`output_dir`): sft/<target>, grm_rl/grm, ...; a policy_rl
# section writes <section>/policy.
_OUTPUTS = {"vision": "model", "grm_rl": "grm", "rm": "rm", "dpo": "policy"}


def output_dir(workdir: str, stage: str, target: str = "") -> str:
    """The Hugging Face folder stage `stage` writes under `workdir`: `sft/<target>` (target
    "policy" or "grm"), `vision/model`, `grm_rl/grm`, `rm/rm`, `dpo/policy`, and for the policy RL
    stages `<section>/policy` (stage = the section, e.g. "policy_rl_rm")."""
    if stage == "sft":
        if target not in ("policy", "grm"):
            raise ValueError(f"output_dir: sft target {target!r}: expected 'policy' or 'grm'")
        return os.path.join(workdir, "sft", target)
    return os.path.join(workdir, stage, _OUTPUTS.get(stage, "policy"))


def stage_dir(workdir: str, name: str) -> str:
    path = os.path.join(workdir, name)
    os.makedirs(path, exist_ok=True)
    return path


def prompt_format(config):
    """The prompt format (`models.contract.PromptFormat`) of the run's model family: that of its
    first model role of policy, grm, rm (its checkpoint's config.json, else its hf_config; a run
    without a model: Qwen2-VL's); every role of a run shares the tokenizer, so one family per run."""
    role = next((r for r in ("policy", "grm", "rm") if r in config.model), None) if "model" in config else None
    if role is None:
        return models.family("qwen2_vl").prompt_format({})
    spec = config.model[role]
    hf = (
        models.read_config_json(spec.path)
        if spec.path
        else (spec.hf_config.to_dict() if hasattr(spec.hf_config, "to_dict") else dict(spec.hf_config))
    )
    return models.family(hf.get("model_type")).prompt_format(hf)


def codec(config, workdir: str) -> Codec:
    """The codec of a run: the tokenizer written by the `data` stage, config.image, config.grm_template,
    the family's prompt format (`prompt_format`)."""
    found = paths(config, workdir)
    return Codec.from_dirs(
        found["tokenizer_dir"], config.image, config.grm_template or None, prompts=prompt_format(config)
    )


def runtime(spec, config=None) -> dict:
    """The runtime choices of a `config.model.*` entry as `models` keywords: dtype, param_dtype,
    remat, remat_policy, logits_chunk, vision_chunk, scan_layers, scan_vision, and vision_block (None: the most patches of one frame `config.image`'s processor makes,
    so the tower attends per frame, linear in the number of images; dense without `config`). `spec`
    and `config`: validated (`config.validate`, `config.typed_section`)."""
    block = spec.vision_block
    if block is None:
        block = 0 if config is None else processing.max_frame_patches(image_processor(config.image))
    return dict(
        dtype=DTYPES[spec.dtype],
        param_dtype=DTYPES[spec.param_dtype],
        remat=bool(spec.remat),
        remat_policy=str(spec.remat_policy),
        logits_chunk=int(spec.logits_chunk),
        vision_block=int(block),
        vision_chunk=int(spec.vision_chunk),
        scan_layers=bool(spec.scan_layers),
        scan_vision=bool(spec.scan_vision),
    )


def mesh_from_config(config):
    """The run's device mesh over ("data", "fsdp", "tensor") from `config.mesh_shape`."""
    return sharding.make_mesh(tuple(config.mesh_shape))


def model_config(spec, codec: Codec) -> dict:
    """The HF config dict of a model to initialise randomly: `spec.hf_config` with the tokenizer's
    vocabulary size and special ids filled in."""
    hf = spec.hf_config.to_dict() if hasattr(spec.hf_config, "to_dict") else dict(spec.hf_config)
    ids = codec.special_ids()
    text = dict(hf.get("text_config", {}))
    text.update(vocab_size=len(codec.tokenizer), eos_token_id=ids["eos_token_id"], pad_token_id=ids["pad_token_id"])
    hf["text_config"] = text
    for k in codec.prompts.config_ids(codec.tokenizer):  # the family's special-token keys
        hf[k] = ids[k]
    return hf


def new_or_load(
    spec, codec: Codec, *, seed: int, scalar_head: bool = False, from_path: str | None = None, mesh=None, config=None
):
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


def load_stage_output(path: str, hint: str, config=None, spec=None, *, scalar_head: bool = False):
    """Loads an HF folder an earlier stage wrote, in the dtypes of `spec` (a `config.model.*`
    entry; None: the models' defaults) and sharded over the config's mesh; a missing folder is an
    error naming what writes it."""
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"{path} is missing: {hint}")
    mesh = mesh_from_config(config) if config is not None else None
    rt = runtime(spec, config) if spec is not None else {}
    return models.load_pretrained(path, mesh=mesh, scalar_head=scalar_head, **rt)


def world_config(config) -> W.WorldConfig:
    """The synthetic world of the validated `config.data` (its rule checked it: config.sections)."""
    return from_section(config.data)


def data_dir(config, workdir: str) -> str:
    """config.data.dir (a bucket URL: its local mirror, `storage.local`), else workdir/data."""
    from grlhfv_jax import storage

    d = config.data.dir
    return storage.local(d) if d else os.path.join(workdir, "data")


def kind(config) -> str:
    """config.data.kind: "world" or "files"."""
    return config.data.kind


def paths(config, workdir: str) -> dict:
    """The dataset and tokenizer folders written by this stage."""
    path = os.path.join(workdir, "data_paths.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing: run the 'data' stage first (add it to config.stages)")
    with open(path) as f:
        return json.load(f)


def source(config, workdir: str):
    """The run's data source (`data.sources`): the synthetic world this stage wrote, or the
    preference files it checked (`data_files.source`)."""
    found = paths(config, workdir)
    written = found["kind"] if "kind" in found else "world"  # the world's data_paths.json names no kind
    if written != kind(config):
        raise ValueError(
            f"{os.path.join(workdir, 'data_paths.json')} was written for config.data.kind = "
            f"{written!r}, not {kind(config)!r}: rerun the 'data' stage"
        )
    if kind(config) == "files":
        from grlhfv_jax.data import files_convert as data_files

        d = config.data
        proc = None
        if d.image_workers > 0:  # the processor the stages' codec uses (roles.codec): config.image's
            proc = image_processor(config.image)
        return data_files.source(found, d.read_threads, d.image_workers, proc)
    return sources.WorldSource(found["data_dir"], world_config(config))


def hooks(config) -> sources.WorldHooks | None:
    """The evaluation hooks of the run's source, before its data exists (for validation): None for files."""
    return sources.WorldHooks() if kind(config) == "world" else None


def warm_start(config, workdir: str, target: str) -> tuple[str, str]:
    """(folder, what writes it) of the `target` ("policy" or "grm") the RL and DPO stages start from:
    this stage's output when the config trains that target (config.sft.<target>), else the
    checkpoint config.model.<target>.path (an instruct model, as the paper's stage 1 starts)."""
    if "sft" in config and target in config.sft:
        return output_dir(workdir, "sft", target), f"run the 'sft' stage (with config.sft.{target}) first"
    path = config.model[target].path if target in config.model else None
    if not path:
        return output_dir(workdir, "sft", target), (
            f"set config.model.{target}.path (a checkpoint) or train a warm start with config.sft.{target}"
        )
    return path, f"config.model.{target}.path is not a Hugging Face checkpoint folder"


def trainee_and_reference(config, workdir: str, target: str):
    """Two independent copies of the `target` warm start (`warm_start`): the model an RL or DPO
    stage trains and its frozen reference."""
    src, hint = warm_start(config, workdir, target)
    return tuple(load_stage_output(src, hint, config, config.model[target]) for _ in range(2))


def load_rm(workdir: str, config=None):
    """The trained score-only RM: this run's `rm` stage output, else (a run without the `rm` stage)
    config.model.rm.path, a folder an earlier run's `rm` stage wrote."""
    spec = (config.model.rm if "rm" in config.model else config.model.grm) if config is not None else None
    path = output_dir(workdir, "rm")
    if spec is not None and "rm" not in config.stages and spec.path:
        path = spec.path
    return load_stage_output(
        path, "run the 'rm' stage first (or give its folder as config.model.rm.path)", config, spec, scalar_head=True
    )


def copy_tower(model, workdir: str, config=None, spec=None) -> None:
    """Replaces `model`'s vision tower by the one the `vision` stage wrote (shapes must match)."""
    src = load_stage_output(
        output_dir(workdir, "vision"), "run the 'vision' stage first (add it to config.stages)", config, spec
    )
    a, b = nnx.state(model.visual, nnx.Param), nnx.state(src.visual, nnx.Param)
    shapes = [[(jax.tree_util.keystr(k), x.shape) for k, x in jax.tree_util.tree_leaves_with_path(s)] for s in (a, b)]
    if shapes[0] != shapes[1]:
        raise ValueError(
            "the vision stage's tower does not match this model's vision config "
            f"({output_dir(workdir, 'vision')}); give both the same config.model hf_config vision_config"
        )
    nnx.update(model.visual, b)


def make_judge(cfg, *, codec: Codec, load_grm, workdir: str = "", max_prompts: int = 16) -> Judge:
    """Stage 2's judge from its validated judge section (`config.sections.JUDGE`, e.g. `sec.judge`):
    kind 'grm' -> `GRMJudge` on the model `load_grm()` returns (called only then), frozen, up to
    `max_prompts` groups per call; kind 'http' -> `rollout.http_judge.HTTPJudge` at `base_url`
    serving `model`, sending the codec's GRM template (the run's `config.grm_template`: the prompt
    the in-process judge would see), its cache under `workdir` unless `cache_dir` is absolute."""
    if cfg.kind == "grm":
        return GRMJudge(load_grm(), codec, max_prompts=int(max_prompts))
    if cfg.kind == "http":
        from grlhfv_jax.rollout.http_judge import HTTPJudge

        cache = cfg.cache_dir
        if cache and workdir and "://" not in cache and not os.path.isabs(cache):
            cache = os.path.join(workdir, cache)
        return HTTPJudge(
            str(cfg.base_url),
            str(cfg.model),
            api_key_env=str(cfg.api_key_env),
            max_concurrency=int(cfg.max_concurrency),
            timeout_s=float(cfg.timeout_s),
            max_retries=int(cfg.max_retries),
            backoff_s=float(cfg.backoff_s),
            backoff_max_s=float(cfg.backoff_max_s),
            cache_dir=cache or None,
            template=codec.grm_template,
        )
    raise ValueError(f"judge kind {cfg.kind!r}: expected 'grm' or 'http'")
