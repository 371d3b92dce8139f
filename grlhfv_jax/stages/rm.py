"""Stage `rm`: the score-only Bradley-Terry reward model (baseline).

A scalar head on the last token, trained on the GRM's preference pairs with
-log sigmoid(r_w - r_l) + reg * mean(r^2). Starts from the GRM's warm start (`init="sft_grm"`,
the same starting point as the GRM) or from a fresh model. Writes `workdir/rm/rm`.
"""

from __future__ import annotations

import os

from grlhfv_jax.checkpoint import export_hf
from grlhfv_jax.stages import ConfigError, check_section, judging
from grlhfv_jax.trainers import loop, steps
from grlhfv_jax import encoding
from grlhfv_jax import roles

POS_INT = (int, lambda v: v >= 1, "an int >= 1")
SCHEMA = {
    "steps": POS_INT, "pairs_per_step": POS_INT,
    "lr": ((int, float), lambda v: v > 0, "a positive number"),
    "max_len": (int, lambda v: v >= 8, "an int >= 8"),
    "reg": ((int, float), lambda v: v >= 0, "a number >= 0"),
    "eval_pairs": (int, lambda v: v >= 0, "an int >= 0"),
}


def validate(config, section: str) -> None:
    check_section(config, section, SCHEMA)
    if config[section].init not in ("sft_grm", "random"):
        raise ConfigError(f"config.{section}.init = {config[section].init!r}: expected 'sft_grm' or 'random'")


def run(config, workdir: str, writer, section: str) -> dict:
    sec = config[section]
    src = roles.source(config, workdir)
    codec = roles.codec(config, workdir)
    init, hint = roles.warm_start(config, workdir, "grm") if sec.init == "sft_grm" else (None, "")
    if init and not os.path.isfile(os.path.join(init, "config.json")):
        raise FileNotFoundError(f"{init} is missing: {hint}, or set config.{section}.init = 'random'")
    spec = config.model.rm if "rm" in config.model else config.model.grm
    model = roles.new_or_load(spec, codec, seed=config.seed + 7, scalar_head=True, from_path=init,
                               mesh=roles.mesh_from_config(config), config=config)
    state = loop.make_train_state(model, sec, sec.steps)
    ds = src.dataset("grm_train", seed=config.seed + 3, batch_size=sec.pairs_per_step)
    cfg = steps.BTConfig(reg=float(sec.reg), num_micro_batches=int(sec.num_micro_batches))

    def make_batch(step):
        b = encoding.batch(encoding.pair_examples(codec, ds[step]), codec, side="right", max_len=sec.max_len)
        b.pop("valid")
        return loop.micro_batch_images(model, b, cfg.num_micro_batches)   # the tower per micro-batch

    loop.train_loop("rm", state, steps=sec.steps, make_batch=make_batch,
                    step_fn=lambda s, b: steps.bt_rm_step(s, b, cfg), writer=writer,
                    ckpt_dir=os.path.join(workdir, "rm", "ckpt"), log_every=int(sec.log_every),
                    ckpt_every=int(sec.ckpt_every))
    export_hf(state.model, roles.output_dir(workdir, "rm"), codec=codec)
    summary = {}
    if sec.eval_pairs:
        rows = int(sec.eval_rows)
        for split, tag in (("grm_test_id", "id"), ("grm_test_ood", "ood")):
            recs = src.records(split, n=sec.eval_pairs)
            m = judging.rm_accuracy(state.model, codec, recs, rows=rows, max_len=sec.max_len)
            summary.update({f"baseline_rm/{k}_{tag}": v for k, v in m.items()})  # accuracy[_<pair type>]_<id|ood>
    return summary
