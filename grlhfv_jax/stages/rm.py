"""Stage `rm`: the score-only Bradley-Terry reward model (baseline).

A scalar head on the last token, trained on the GRM's preference pairs with
-log sigmoid(r_w - r_l) + reg * mean(r^2). Starts from the GRM's warm start (`init="sft_grm"`,
the same starting point as the GRM) or from a fresh model. Writes `workdir/rm/rm`.
"""

from __future__ import annotations

import os

from grlhfv_jax import encoding, memory, roles
from grlhfv_jax.checkpoint import export_hf
from grlhfv_jax.stages import judging
from grlhfv_jax.trainers import loop, steps


def run(config, workdir: str, writer, section: str) -> dict:
    sec = config[section]
    src = roles.source(config, workdir)
    codec = roles.codec(config, workdir)
    init, hint = roles.warm_start(config, workdir, "grm") if sec.init == "sft_grm" else (None, "")
    if init and not os.path.isfile(os.path.join(init, "config.json")):
        raise FileNotFoundError(f"{init} is missing: {hint}, or set config.{section}.init = 'random'")
    spec = config.model.rm if "rm" in config.model else config.model.grm
    model = roles.new_or_load(
        spec,
        codec,
        seed=config.seed + 7,
        scalar_head=True,
        from_path=init,
        mesh=roles.mesh_from_config(config),
        config=config,
    )
    state = loop.make_train_state(model, sec, sec.steps)
    ds = src.dataset("grm_train", seed=config.seed + 3, batch_size=sec.pairs_per_step)
    cfg = steps.BTConfig.from_section(sec)

    def make_batch(step):
        b = encoding.batch(encoding.pair_examples(codec, ds[step]), codec, side="right", max_len=sec.max_len)
        b.pop("valid")
        return loop.micro_batch_images(model, b, cfg.num_micro_batches)  # the tower per micro-batch

    loop.train_loop(
        "rm",
        state,
        steps=sec.steps,
        make_batch=make_batch,
        step_fn=lambda s, b: steps.bt_rm_step(s, b, cfg),
        writer=writer,
        ckpt_dir=os.path.join(workdir, "rm", "ckpt"),
        log_every=int(sec.log_every),
        ckpt_every=int(sec.ckpt_every),
    )
    export_hf(state.model, roles.output_dir(workdir, "rm"), codec=codec)
    summary = {}
    if sec.eval_pairs:
        rows = int(sec.eval_rows)
        for split, tag in (("grm_test_id", "id"), ("grm_test_ood", "ood")):
            recs = src.records(split, n=sec.eval_pairs)
            m = judging.rm_accuracy(state.model, codec, recs, rows=rows, max_len=sec.max_len)
            summary.update({f"baseline_rm/{k}_{tag}": v for k, v in m.items()})  # accuracy[_<pair type>]_<id|ood>
    return summary


def memory_phases(config, section: str) -> list[memory.Memory]:
    """What a step holds (the dry run prices it): the RM and one micro-batch of both responses of
    its pairs, each row's image through the tower."""
    sec = config[section]
    rm_model = memory.Model("rm" if "rm" in config.model else "grm", scalar=True)
    rows = 2 * sec.pairs_per_step // sec.num_micro_batches
    phase = memory.Phase(
        f"train micro-batch: {rows} rows x {sec.max_len} tokens",
        rm_model,
        rows,
        sec.max_len,
        0,
        backward=True,
        images=rows,
    )
    return [memory.Memory((rm_model,), rm_model, sec.freeze, (phase,))]
