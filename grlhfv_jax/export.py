"""A stage's output or checkpoint -> a complete Hugging Face folder (`python -m grlhfv_jax.export`).

The folder holds what transformers (and vLLM, SGLang, lmms-eval) need to load the model:

    config.json                  the model config; its special token ids (bos / eos / pad, image,
                                 video, vision start / end) those of the tokenizer below
    model.safetensors            the weights (`models.save_pretrained`; sharded with an index when large)
    tokenizer.json, tokenizer_config.json, chat_template.jinja
                                 the run's tokenizer with its chat template (Qwen2-VL's)
    preprocessor_config.json     Qwen2VLImageProcessor with the run's config.image (min / max pixels,
                                 patch, merge and temporal patch sizes)
    generation_config.json       bos / eos / pad ids: generation stops at `<|im_end|>`, as our engine

`write_folder` (hf_folder.py) writes it for a live model; `checkpoint.export_hf` (every stage's export) calls it,
so a stage's own output folder is complete too. The command line re-exports a stage's folder or
restores a stage's latest checkpoint (an interrupted stage):

    python -m grlhfv_jax.export --workdir RUN --stage policy_rl --out DIR      # [--role policy]
    python -m grlhfv_jax.export --workdir RUN --checkpoint RUN/policy_rl/ckpt --role policy --out DIR

The run's config is RUN/config.json (or `--config`: a configs/*.py[:arg] file or a JSON config),
its tokenizer the one the `data` stage wrote (RUN/data_paths.json; or `--tokenizer DIR`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys

import ml_collections

from grlhfv_jax import encoding, roles

# the folder itself (hf_folder.py, so checkpoint.export_hf needs no command line); `export.write_folder` too
from grlhfv_jax.hf_folder import ExportError, copy_folder, write_folder

# stage -> its roles (the first is the default --role)
STAGE_ROLES = {
    "sft": ("policy", "grm"),
    "vision": ("model",),
    "grm_rl": ("grm",),
    "rm": ("rm",),
    "policy_rl": ("policy",),
    "policy_rl_rm": ("policy",),
    "policy_ppo_rm": ("policy",),
    "dpo": ("policy",),
}


# ----------------------------------------------------------------------------- a run's models


def load_config(spec: str):
    """A run's config: a JSON file (RUN/config.json, as main.py writes it) or a configs/*.py file
    with an optional `:arg` for its get_config. Returns it validated (`config.validate`: keys, types,
    ranges; frozen, defaults filled)."""
    from grlhfv_jax import config as config_schema

    path, _, arg = spec.partition(":") if not os.path.isfile(spec) else (spec, "", "")
    if not os.path.isfile(path):
        raise ExportError(f"config file not found: {path!r}")
    if path.endswith(".json"):
        with open(path, encoding="utf-8") as f:
            config = ml_collections.ConfigDict(json.load(f))
    else:
        module_spec = importlib.util.spec_from_file_location("_export_config", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        config = module.get_config(arg) if arg else module.get_config()
    return config_schema.validate(config, complete=False)  # its model entries and image: not a run to start


def run_codec(config, workdir: str | None, tokenizer_dir: str | None = None):
    """The run's tokenizer + image processor (`encoding.Codec`): `tokenizer_dir`, else the
    tokenizer the `data` stage wrote in `workdir` (data_paths.json)."""
    if tokenizer_dir is None:
        if workdir is None:
            raise ExportError("no tokenizer: give --workdir (a run whose 'data' stage wrote one) or --tokenizer DIR")
        found = os.path.join(workdir, "data_paths.json")
        if not os.path.isfile(found):
            raise ExportError(
                f"{found} is missing: the run's 'data' stage has not written its tokenizer (or give --tokenizer DIR)"
            )
        with open(found, encoding="utf-8") as f:
            tokenizer_dir = json.load(f)["tokenizer_dir"]
    if not os.path.isdir(tokenizer_dir):
        raise ExportError(f"tokenizer folder not found: {tokenizer_dir!r}")
    return encoding.Codec.from_dirs(tokenizer_dir, config.image, config.get("grm_template") or None)


def stage_paths(workdir: str, stage: str, role: str | None = None) -> tuple[str, str, str | None]:
    """(role, the stage's output folder, its checkpoint folder or None) for `stage` in `workdir`.
    The vision stage's checkpoint holds its probe (tower + heads), not a model: None."""
    if stage not in STAGE_ROLES:
        raise ExportError(f"unknown stage {stage!r}; stages with a model to export: {', '.join(STAGE_ROLES)}")
    roles = STAGE_ROLES[stage]
    role = role or roles[0]
    if role not in roles:
        raise ExportError(f"stage {stage!r} has no role {role!r} (roles: {', '.join(roles)})")
    if stage == "sft":
        return role, os.path.join(workdir, "sft", role), os.path.join(workdir, "sft", f"ckpt_{role}")
    out = {"vision": "model", "grm_rl": "grm", "rm": "rm"}.get(stage, "policy")
    ckpt = None if stage == "vision" else os.path.join(workdir, stage, "ckpt")
    return role, os.path.join(workdir, stage, out), ckpt


def _spec_role(config, role: str) -> str:
    if role == "rm":
        return "rm" if "rm" in config.model else "grm"
    if role == "model":  # the vision stage's
        return config.vision.model if "vision" in config else "policy"
    return role


def model_hf_config(config, codec, role: str, workdir: str | None = None) -> dict:
    """The HF config of the model a stage trains for `role`: that of the folder it started from
    (the SFT warm start of the RL / DPO / RM stages, config.model.<role>.path), else the random
    model's (`roles.model_config`)."""
    from grlhfv_jax.models import read_config_json

    spec = config.model[_spec_role(config, role)]
    start = None
    if workdir is not None and role in ("policy", "grm"):
        start = os.path.join(workdir, "sft", role)
    elif workdir is not None and role == "rm" and "rm" in config and config.rm.get("init") == "sft_grm":
        start = os.path.join(workdir, "sft", "grm")
    for path in (start, spec.get("path")):
        if path and os.path.isfile(os.path.join(path, "config.json")):
            return read_config_json(path)
    return roles.model_config(spec, codec)


def restore_checkpoint(ckpt_dir: str, config, codec, role: str, workdir: str | None = None):
    """The model in the newest finished step of the Orbax checkpoint folder `ckpt_dir` (a stage's
    `Checkpointer` folder: the parameters of role `role`; the optimizer state is not read)."""
    import jax
    import orbax.checkpoint as ocp
    from flax import nnx

    from grlhfv_jax import models

    if not os.path.isdir(ckpt_dir):
        raise ExportError(f"checkpoint folder not found: {ckpt_dir}")
    mgr = ocp.CheckpointManager(os.path.abspath(ckpt_dir), options=ocp.CheckpointManagerOptions(read_only=True))
    try:
        step = mgr.latest_step()
        if step is None:
            raise ExportError(f"no finished checkpoint step in {ckpt_dir}")
        spec = config.model[_spec_role(config, role)]
        rt = roles.runtime(spec, config)
        hf = model_hf_config(config, codec, role, workdir)
        model = nnx.eval_shape(lambda: models.from_config(hf, rngs=nnx.Rngs(0), scalar_head=role == "rm", **rt))
        params = nnx.state(model, nnx.Param)
        host = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])  # host memory, not an accelerator's
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=host), {"model": nnx.to_pure_dict(params)}
        )
        try:
            restored = mgr.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.PyTreeRestore(
                        item=abstract,
                        partial_restore=True,
                        restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
                    )
                ),
            )
        except Exception as e:
            raise ExportError(
                f"cannot restore step {step} of {ckpt_dir} as the {role!r} model of this config "
                f"({type(e).__name__}: {str(e)[:500]})"
            ) from e
        nnx.replace_by_pure_dict(params, restored["state"]["model"])
        nnx.update(model, params)
    finally:
        mgr.close()
    print(f"[export] restored step {step} from {ckpt_dir}", flush=True)
    return model


def export(
    out: str,
    *,
    workdir: str | None = None,
    stage: str | None = None,
    role: str | None = None,
    checkpoint: str | None = None,
    config=None,
    tokenizer_dir: str | None = None,
    dtype=None,
) -> str:
    """Writes the complete HF folder `out` of a stage's model (`stage`, `role` in `workdir`: its
    finished output folder, else its newest checkpoint) or of `checkpoint` (an Orbax checkpoint
    folder or an HF folder). `config`: the run's (default: workdir/config.json). Returns `out`."""
    if stage is None and checkpoint is None:
        raise ExportError("give --stage (with --workdir) or --checkpoint")
    if config is None:
        if workdir is None:
            raise ExportError("give --workdir (the run folder) or --config (the run's config)")
        found = os.path.join(workdir, "config.json")
        if not os.path.isfile(found):
            raise ExportError(f"{found} is missing: {workdir} is not a run folder (or give --config)")
        config = load_config(found)
    if stage is not None:
        if workdir is None:
            raise ExportError("--stage needs --workdir (the run folder)")
        role, folder, ckpt = stage_paths(workdir, stage, role)
        if checkpoint is None:
            if os.path.isfile(os.path.join(folder, "config.json")):
                checkpoint = folder
            elif ckpt is not None and os.path.isdir(ckpt):
                checkpoint = ckpt
            else:
                where = f"no {folder}" + (f" and no checkpoint in {ckpt}" if ckpt else "")
                raise ExportError(
                    f"stage {stage!r} ({role}) has no output in {workdir}: {where}. "
                    f"Run the stage first (config.stages)."
                )
    role = role or "policy"
    codec = run_codec(config, workdir, tokenizer_dir)
    if os.path.abspath(checkpoint) == os.path.abspath(out):
        raise ExportError(f"--out {out} is the source folder: write the export elsewhere")
    if os.path.isfile(os.path.join(checkpoint, "config.json")):
        print(f"[export] {checkpoint} -> {out}", flush=True)
        copy_folder(checkpoint, out, codec)
    else:
        write_folder(restore_checkpoint(checkpoint, config, codec, role, workdir), out, codec, dtype=dtype)
    print(f"[export] wrote {out}", flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m grlhfv_jax.export", description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", help="the run folder (config.json, data_paths.json, the stages' outputs)")
    p.add_argument("--stage", help=f"the stage whose model to export: {', '.join(STAGE_ROLES)}")
    p.add_argument("--role", help="which of the stage's models (sft: policy or grm); default: the stage's first")
    p.add_argument(
        "--checkpoint",
        help="an Orbax checkpoint folder (a stage's ckpt/) or an HF folder, instead of the stage's output",
    )
    p.add_argument(
        "--config", help="the run's config (default: WORKDIR/config.json): a JSON file or configs/X.py[:arg]"
    )
    p.add_argument("--tokenizer", help="tokenizer folder (default: the one WORKDIR's data stage wrote)")
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        help="on-disk dtype of restored weights (default: the parameters' own)",
    )
    p.add_argument("--out", required=True, help="the folder to write")
    args = p.parse_args(argv)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)  # orbax's read-only notices
    try:
        config = load_config(args.config) if args.config else None
        dtype = None
        if args.dtype:
            import jax.numpy as jnp

            dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[args.dtype]
        export(
            args.out,
            workdir=args.workdir,
            stage=args.stage,
            role=args.role,
            checkpoint=args.checkpoint,
            config=config,
            tokenizer_dir=args.tokenizer,
            dtype=dtype,
        )
    except (ExportError, FileNotFoundError) as e:
        print(f"export error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
