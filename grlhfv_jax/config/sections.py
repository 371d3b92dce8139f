"""One schema per config section: every key's type, default, constraint and meaning, the only place
a default lives, and each section's cross-key rules beside it (`rule(sec, path, config)`: `sec` the
frozen section at dotted `path`, `config` the whole frozen config; raises ConfigError naming a key).
`REQUIRED` keys have none: missing from a section a running stage reads, they are an error.
"""

from __future__ import annotations

import dataclasses

from grlhfv_jax.config.schema import (
    REQUIRED,
    Check,
    ConfigError,
    Key,
    Section,
    above,
    at_least,
    bad_value,
    build,
    choices,
    each,
    interval,
    registry,
    run_rules,
)

POS = at_least(1)
NONNEG = at_least(0)
PROB = interval(0, 1)
CKPT_EVERY_MINUTES = 30.0  # the default time-based checkpoint interval (trainers.loop.stage_defaults too)


def _divides(key: str, whole_key: str):
    """A rule: `sec[key]` divides `sec[whole_key]`."""

    def rule(sec, path, config):
        if sec[whole_key] % sec[key]:
            raise ConfigError(f"config.{path}.{key} = {sec[key]} must divide {whole_key} = {sec[whole_key]}")

    return rule


# Keys of every section that trains (loop.make_train_state reads them).
OPTIMIZER = Section(
    {
        "lr": Key("float", REQUIRED, "peak learning rate (AdamW)", above(0)),
        "warmup_ratio": Key("float", 0.03, "fraction of the updates spent warming the learning rate up", PROB),
        "weight_decay": Key("float", 0.01, "AdamW weight decay", NONNEG),
        "max_grad_norm": Key("float", 1.0, "global gradient-norm clipping", above(0)),
        "freeze": Key("list", (), "parameter path prefixes left untrained (e.g. ['visual'])"),
    }
)


def _logging(log_every: int, ckpt_every: int) -> dict:
    """The logging and checkpoint intervals of a training section, with its defaults."""
    return {
        "log_every": Key("int", log_every, "steps between logged metrics", POS),
        "ckpt_every": Key("int", ckpt_every, "steps between checkpoints (a rerun resumes from the last)", POS),
        "ckpt_every_minutes": Key(
            "float",
            CKPT_EVERY_MINUTES,
            "minutes between checkpoints by the clock, "
            "beside ckpt_every (0: off): a long step loses at most this much work",
            NONNEG,
        ),
    }


def _grpo_slices(prompts):
    """A rule of an RL section: each slicing of a step divides its prompts (`prompts(sec)`), and the
    gradient micro-batches divide an update's."""

    def rule(sec, path, config):
        per = prompts(sec)
        for key in ("mini_batches", "ref_num_micro_batches", "rollout_num_micro_batches"):
            if per % sec[key]:
                raise ConfigError(f"config.{path}.{key} = {sec[key]} must divide the prompts per step ({per})")
        if (per // sec.mini_batches) % sec.num_micro_batches:
            raise ConfigError(
                f"config.{path}.num_micro_batches = {sec.num_micro_batches} must divide the prompts "
                f"per update ({per // sec.mini_batches})"
            )

    return rule


# The GRPO loss (steps.GRPOConfig.from_section), shared by stage 1 and stage 2.
GRPO = {
    "mini_batches": Key("int", REQUIRED, "optimizer updates per RL step (must divide the prompts per step)", POS),
    "kl_coef": Key("float", REQUIRED, "weight of the KL penalty to the reference model", NONNEG),
    "clip_eps": Key(
        "float", REQUIRED, "PPO ratio clip (lower side; upper side too unless clip_eps_high)", interval(0, 1, "()")
    ),
    "clip_eps_high": Key("float?", None, "PPO ratio clip, upper side (None: clip_eps)", above(0)),
    "clip_ratio_c": Key("float?", None, "dual-clip bound for negative advantages (None: off)", above(0)),
    "entropy_coef": Key("float", 0.0, "entropy bonus weight"),
    "num_micro_batches": Key("int", 1, "gradient accumulation micro-batches per update", POS),
    "ref_num_micro_batches": Key(
        "int",
        1,
        "slices of the reference log-prob pass over a step's rows (memory only; must divide the prompts per step)",
        POS,
    ),
    "rollout_num_micro_batches": Key(
        "int",
        1,
        "sampler calls a step's prompts are split into, whole prompt groups "
        "each (memory: one call's prefill and KV cache; the same samples: each "
        "call draws its rows' share of one call's draw); must divide the "
        "prompts per step",
        POS,
    ),
    "advantage_estimator": Key(
        "str", "grpo", "advantages: grpo, grpo_no_std, rloo", registry("grlhfv_jax.rl.grpo.ADVANTAGE_ESTIMATORS")
    ),
    "kl_estimator": Key(
        "str",
        "k3",
        "KL penalty per token: k1, k2, k3 = low_var_kl or abs",
        registry("grlhfv_jax.rl.grpo.KL_ESTIMATORS"),
    ),
    "loss_agg_mode": Key(
        "str",
        "token-mean",
        "token losses -> loss: token-mean, seq-mean-*",
        registry("grlhfv_jax.rl.grpo.LOSS_AGGREGATIONS"),
    ),
    "policy_loss": Key(
        "str", "grpo", "policy loss: grpo = ppo_clip, the clipped loss", registry("grlhfv_jax.rl.grpo.POLICY_LOSSES")
    ),
}

MODEL = Section(
    {
        "hf_config": Key("map", REQUIRED, "Hugging Face config dict of a randomly initialised model"),
        "path": Key("str?", None, "a Hugging Face checkpoint folder to load instead of hf_config"),
        "dtype": Key("str", "float32", "compute dtype", choices("float32", "bfloat16")),
        "param_dtype": Key("str", "float32", "master-weight dtype", choices("float32", "bfloat16")),
        "remat": Key("bool", False, "recompute activations in the backward pass (saves memory)"),
        "remat_policy": Key(
            "str",
            "nothing",
            "with remat, what each block keeps for the backward pass: nothing, dots (projection outputs) or dots_all",
            registry("grlhfv_jax.models.layers.REMAT_POLICIES"),
        ),
        "logits_chunk": Key(
            "int",
            0,
            "LM-head columns per piece in the training losses (0: all at once); e.g. 256 keeps "
            "rows x 256 x vocab float32 logits live instead of rows x columns x vocab",
            NONNEG,
        ),
        "vision_block": Key(
            "int?",
            None,
            "patches per vision attention block (None: the largest frame the image "
            "processor makes, per-frame attention linear in the images; 0: dense)",
            NONNEG,
        ),
        "vision_chunk": Key(
            "int",
            0,
            "query patches per piece of the vision tower's per-frame attention, whole "
            "vision blocks (0: all at once); bounds a trained tower's attention scores, "
            "forward and backward, to vision_chunk x heads x 3 vision_block floats",
            NONNEG,
        ),
        "scan_layers": Key(
            "bool",
            False,
            "decoder layers stored stacked [layers, ...] and run by a scan: one layer to "
            "compile instead of all (compile time); same math, same hub files",
        ),
        "scan_vision": Key(
            "bool",
            False,
            "vision tower blocks stored stacked [blocks, ...] and run by a scan: one "
            "block to compile instead of all (compile time of a trained tower); same "
            "math, same hub files",
        ),
    }
)

# The splits the stages read (data/world: SPLITS), each a section of config.data.files.
DATA_SPLITS = ("sft_policy", "sft_grm", "grm_train", "grm_test_id", "grm_test_ood", "policy_train", "policy_test")

# One split of preference files on disk (config.data.kind = "files"; grlhfv_jax.data.files_source).
DATA_FILES_SPLIT = Section(
    {
        "path": Key(
            "str",
            REQUIRED,
            "a parquet file / folder, a datasets.save_to_disk folder or a .jsonl file",
            Check("a non-empty path", lambda v: len(v) > 0),
        ),
        "format": Key(
            "str", "auto", "auto, parquet, arrow or jsonl", registry("grlhfv_jax.data.preference_files.FORMATS")
        ),
        "fields": Key(
            "str",
            "align_anything",
            "column names: a data.preference_files.FIELD_MAPS name",
            registry("grlhfv_jax.data.preference_files.FIELD_MAPS"),
        ),
        "on_bad": Key(
            "str",
            "skip",
            "a bad record: skip it (counted in the summary) or fail (names file and row)",
            choices("skip", "fail"),
        ),
        "limit": Key("int?", None, "keep at most this many records (None: all)", NONNEG),
    }
)


@dataclasses.dataclass(frozen=True)
class Reader:
    """A stage reading a split of preference files: `what` it builds from each record ("grm": the GRM
    prompt of the pair, "responses": question + each response, "answer": question + the preferred
    response, "prompt": the question alone) and the `key` of its token limit, `max_len`."""

    what: str
    key: str
    max_len: int


def readers(config) -> dict[str, list[Reader]]:
    """split -> the stages of this run that read it (data.files_convert' table), from the frozen config."""
    out = {}

    def add(split, what, key):
        node = config
        for part in key.split("."):
            node = node[part]
        out.setdefault(split, []).append(Reader(what, f"config.{key}", int(node)))

    for stage in config.stages:
        if stage == "sft" and "policy" in config.sft:
            if config.sft.policy.data == "best":
                add("sft_policy", "answer", "sft.policy.max_len")
            elif config.sft.policy.data == "candidates":
                add("sft_grm", "responses", "sft.policy.max_len")
        if stage == "sft" and "grm" in config.sft:
            add("sft_grm", "grm", "sft.grm.max_len")  # the prompt; prompt + judgment too long: left out (stages.sft)
        elif stage in ("grm_rl", "rm"):
            what = "grm" if stage == "grm_rl" else "responses"
            add("grm_train", what, f"{stage}.max_len")
            if config[stage].eval_pairs:
                add("grm_test_id", what, f"{stage}.max_len")
                add("grm_test_ood", what, f"{stage}.max_len")
        elif stage == "dpo":
            add("grm_train", "responses", "dpo.max_len")
        elif stage in ("policy_rl", "policy_rl_rm"):
            add("policy_train", "prompt", f"{stage}.max_len")
    return out


def tokenizer_dir(config) -> str | None:
    """config.data.tokenizer_dir, else the checkpoint folder of the first of config.model.policy /
    grm / rm that has a path (a Qwen checkpoint holds its tokenizer)."""
    paths = [config.model[r].path for r in ("policy", "grm", "rm") if r in config.model and config.model[r].path]
    return config.data.tokenizer_dir or (paths[0] if paths else None)


# stages that cannot run on preference files, and why
WORLD_ONLY_STAGES = {
    "vision": "it pretrains the vision tower on the synthetic world's image labels (colour, count, shape, position)",
    "evaluate": "it scores answers with the synthetic world's oracle",
    "nscale": "it scores answers with the synthetic world's oracle",
}


def _world(sec, path, config):
    """kind = world: the keys make a WorldConfig (data.world.config.from_section)."""
    if sec.kind != "world":
        return
    from grlhfv_jax.data.world import config as world_config

    try:
        world_config.from_section(sec)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config.{path}.{e}") from None


def _files(sec, path, config):
    """kind = files: no stage that needs the world, every split a stage reads configured, a tokenizer."""
    if sec.kind != "files":
        return
    for stage in config.stages:
        if stage in WORLD_ONLY_STAGES:
            raise ConfigError(
                f"config.stages: stage '{stage}' cannot run with config.data.kind = 'files': "
                f"{WORLD_ONLY_STAGES[stage]}; leave it out"
            )
    if "sft" in config.stages:
        if "grm" in config.sft:
            _files_sft_grm(config, path)
        if "policy" in config.sft and config.sft.policy.data == "styled":
            raise ConfigError(
                "config.sft.policy.data = 'styled' restyles answers with the synthetic world's styles; "
                "with config.data.kind = 'files' use 'best' (the preferred responses) or 'candidates'"
            )
    files = sec.get("files", {})
    for split, rs in readers(config).items():
        if split not in files:
            names = ", ".join(sorted({r.key.split(".")[1] for r in rs}))
            raise ConfigError(
                f"config.{path}.files.{split} is missing: stage(s) {names} read split '{split}' "
                f"(set config.{path}.files.{split}.path)"
            )
    if not tokenizer_dir(config):
        raise ConfigError(
            f"config.{path}.tokenizer_dir is not set and no config.model.* entry has a path: a files "
            "run needs a tokenizer folder"
        )


def _files_sft_grm(config, path) -> None:
    """sft.grm on preference files: judgments built from the records' annotations (the GRM+SFT
    baseline), read by split sft_grm's field map, judging only."""
    grm = config.sft.grm
    if grm.judgments == "world":
        raise ConfigError(
            "config.sft.grm: judgments = 'world' are the synthetic world's judgments, which preference "
            "files lack; with config.data.kind = 'files' set config.sft.grm.judgments to a "
            "data.grm_targets.JUDGMENTS name (e.g. 'align_anything': judgments from each pair's rates "
            "and critiques) or leave config.sft.grm out (the GRM starts from config.model.grm.path)"
        )
    if grm.vqa_fraction:
        raise bad_value("sft.grm.vqa_fraction", grm.vqa_fraction, "0 with config.data.kind = 'files' (judging only)")
    files = config[path].get("files", {})
    if "sft_grm" in files:
        from grlhfv_jax.data import grm_targets, preference_files

        need = grm_targets.columns(grm_targets.JUDGMENTS[grm.judgments])
        kept = preference_files.FIELD_MAPS[files.sft_grm.fields].meta
        if set(need) - set(kept):
            raise ConfigError(
                f"config.{path}.files.sft_grm.fields = {files.sft_grm.fields!r} keeps no column "
                f"{sorted(set(need) - set(kept))[0]!r}, which config.sft.grm.judgments = "
                f"{grm.judgments!r} reads (e.g. fields = 'align_anything_judgments')"
            )


def _world_sft_grm(sec, path, config):
    """On the synthetic world the GRM warm start learns the world's judgments."""
    if (
        sec.kind == "world"
        and "sft" in config.stages
        and "grm" in config.get("sft", {})
        and config.sft.grm.judgments != "world"
    ):
        raise ConfigError(
            f"config.sft.grm.judgments = {config.sft.grm.judgments!r}: with config.data.kind = 'world' "
            "the GRM warm start learns the world's judgments ('world')"
        )


WORLD = ("kind", "world")  # the keys the synthetic world needs

DATA = Section(
    {
        "kind": Key(
            "str",
            "world",
            "where records come from: world (the synthetic world) or files (config.data.files)",
            choices("world", "files"),
        ),
        "files": Section({split: DATA_FILES_SPLIT for split in DATA_SPLITS}),
        "tokenizer_dir": Key("str?", None, "files: the tokenizer folder (None: the first config.model.* path)"),
        "read_threads": Key(
            "int",
            0,
            "files: threads that read and decode the next batches while a step runs (0: in the step); the same batches",
            NONNEG,
        ),
        "image_workers": Key(
            "int",
            0,
            "files: > 0: the read-ahead also runs config.image's processor on each image, "
            "in max(read_threads, image_workers) threads, so the step does not (0: in "
            "the step); the same batches",
            NONNEG,
        ),
        "too_long": Key(
            "str",
            "skip",
            "files: a record longer than a reading stage's max_len after tokenisation: "
            "skip, truncate (its responses; a prompt that alone is too long is skipped) "
            "or fail; counted in the summary",
            choices("skip", "truncate", "fail"),
        ),
        "seed": Key("int", REQUIRED, "world: the synthetic world's seed", when=WORLD),
        "image_size": Key(
            "int",
            REQUIRED,
            "world: image side in pixels",
            Check("a multiple of 4, >= 16", lambda v: v >= 16 and v % 4 == 0),
            when=WORLD,
        ),
        "label_noise": Key(
            "float",
            REQUIRED,
            "world: probability that a preference label is flipped",
            interval(0, 0.5, "[)"),
            when=WORLD,
        ),
        "vocab_size": Key("int", REQUIRED, "world: size of the demo tokenizer's vocabulary", at_least(300), when=WORLD),
        "dir": Key("str", "", "dataset folder ('' = workdir/data)"),
        "sizes": Key("map", {}, "examples per split (split -> int); unlisted splits get the world's default"),
        "sft_grm_analysis": Key(
            "str",
            "style",
            "what the GRM warm start's analysis says",
            registry("grlhfv_jax.data.world.config.GRM_ANALYSIS_KINDS"),
        ),
        "sft_grm_first_scores": Key("list", (1, 2, 3, 4, 6, 7, 8, 9), "first scores the GRM warm start writes"),
        "sft_grm_second_scores": Key("list", (), "second scores, drawn independently (() = 10 minus the first)"),
        "sft_grm_opinions": Key("list", (), "the GRM warm start's opinions of wordings: (style description, int)"),
        "sft_grm_opinion_strength": Key("float", 0.5, "probability a judgment follows the opinions", PROB),
    },
    rules=(_world, _files, _world_sft_grm),
)

IMAGE = Section(
    {
        "processor_dir": Key("str?", None, "folder with a preprocessor_config.json (None: Qwen2-VL defaults)"),
        "min_pixels": Key("int?", None, "smallest image area after resizing", POS),
        "max_pixels": Key("int?", None, "largest image area after resizing", POS),
        "patch_size": Key("int?", None, "vision patch side in pixels", POS),
        "merge_size": Key("int?", None, "patches merged per side into one image token", POS),
        "temporal_patch_size": Key("int?", None, "frames per temporal patch", POS),
    },
    filled=True,
)


def _vision_model(sec, path, config):
    if "model" not in config or sec.model not in config.model:
        raise bad_value(f"{path}.model", sec.model, "an entry of config.model")


VISION = Section(
    {
        "steps": Key("int", REQUIRED, "training steps", POS),
        "batch_size": Key("int", REQUIRED, "images per step", POS),
        "eval_images": Key("int", REQUIRED, "held-out images for the attribute accuracies", POS),
        "model": Key("str", "policy", "the config.model entry whose tower is trained"),
        **OPTIMIZER,
        **_logging(25, 100),
    },
    rules=(_vision_model,),
)

_SFT_TARGET = {
    "steps": Key("int", REQUIRED, "training steps", POS),
    "batch_size": Key("int", REQUIRED, "examples per step", POS),
    "max_len": Key("int", REQUIRED, "tokens per row", at_least(8)),
    "pretrained_vision": Key("bool", False, "copy the tower the 'vision' stage trained"),
    **OPTIMIZER,
}


def _styled(sec, path, config):
    """data = 'styled' restyles the best answers: the synthetic world's styles, a valid mix."""
    if sec.data != "styled":
        return
    if config.data.kind != "world":
        raise ConfigError(
            f"config.{path}.data = 'styled' needs a data source that restyles answers (the synthetic world)"
        )
    from grlhfv_jax.data import sources

    try:  # the same checks the data path makes
        sources.WorldHooks().check_styles(dict(sec.styles))
    except (TypeError, ValueError) as e:
        raise bad_value(f"{path}.styles", dict(sec.styles), f"a valid style mix ({e})") from None


def _pretrained_vision(sec, path, config):
    """pretrained_vision = True needs the `vision` stage's section and the same vision config."""
    if not sec.pretrained_vision:
        return
    if "vision" not in config:
        raise ConfigError(
            f"config.{path}.pretrained_vision is set but config.vision is missing (the 'vision' stage "
            "pretrains the tower)"
        )
    target, src = path.rsplit(".", 1)[1], config.vision.model
    if target not in config.model or (
        config.model[target].hf_config.get("vision_config") != config.model[src].hf_config.get("vision_config")
    ):
        raise ConfigError(
            f"config.{path}.pretrained_vision: config.model.{target}.hf_config.vision_config "
            f"differs from config.model.{src} (the tower the 'vision' stage trains)"
        )


def _sft_models(sec, path, config):
    if "model" not in config:
        raise ConfigError("config.model is missing (model specs for policy / grm / rm)")


SFT = Section(
    {
        "policy": Section(
            {
                **_SFT_TARGET,
                "data": Key("str", "candidates", "answers to learn", choices("candidates", "best", "styled")),
                "styles": Key("map", {}, "style -> weight for data='styled' (plain, hedged, praised, praise_only)"),
            },
            rules=(_styled, _pretrained_vision),
        ),
        "grm": Section(
            {
                **_SFT_TARGET,
                "judgments": Key(
                    "str",
                    "world",
                    "the judgments the GRM learns: world (the synthetic world's warm-start "
                    "judgments) or, on preference files, a data.grm_targets.JUDGMENTS name "
                    "(built from each pair's per-response rates and critiques: the paper's "
                    "GRM+SFT baseline; split sft_grm)",
                    registry("grlhfv_jax.data.grm_targets.JUDGMENTS"),
                ),
                "vqa_fraction": Key(
                    "float", 0.5, "fraction of each batch that is question answering, not judging", PROB
                ),
                "vqa_max_len": Key(
                    "int",
                    64,
                    "tokens per question-answering row (its own part of the batch, narrower than max_len)",
                    POS,
                ),
            },
            rules=(_pretrained_vision,),
        ),
        **_logging(10, 100),
    },
    rules=(_sft_models,),
)


def _needs_debias(sec, path, config):
    for key in ("consistency_reward", "pool_orders"):
        if sec[key] and not sec.position_debias:
            raise ConfigError(f"config.{path}.{key} needs config.{path}.position_debias = True")


GRM_RL = Section(
    {
        "steps": Key("int", REQUIRED, "RL steps", POS),
        "pairs_per_step": Key("int", REQUIRED, "preference pairs judged per step", POS),
        "group_size": Key("int", REQUIRED, "judgments sampled per prompt (the GRPO group)", at_least(2)),
        "max_len": Key("int", REQUIRED, "prompt tokens", at_least(16)),
        "max_new_tokens": Key("int", REQUIRED, "judgment tokens", POS),
        "temperature": Key("float", REQUIRED, "sampling temperature", above(0)),
        "position_debias": Key("bool", REQUIRED, "also judge every pair in the swapped order, label flipped"),
        "consistency_reward": Key(
            "bool", REQUIRED, "reward 1 only when both orders' judgments are right (needs position_debias)"
        ),
        "pool_orders": Key(
            "bool",
            False,
            "one GRPO group per pair holds both orders' judgments (needs "
            "position_debias): a position-decided judge gets opposite advantages",
        ),
        "eval_pairs": Key("int", REQUIRED, "held-out pairs per split for the accuracies (0: none)", NONNEG),
        "eval_every": Key("int", REQUIRED, "steps between in-training accuracy checks", POS),
        "eval_rows": Key("int", 32, "rows per judging batch in evaluation", POS),
        **GRPO,
        **OPTIMIZER,
        **_logging(5, 25),
    },
    rules=(_needs_debias, _grpo_slices(lambda sec: sec.pairs_per_step * (2 if sec.position_debias else 1))),
)

RM = Section(
    {
        "steps": Key("int", REQUIRED, "training steps", POS),
        "pairs_per_step": Key("int", REQUIRED, "preference pairs per step", POS),
        "max_len": Key("int", REQUIRED, "tokens per row", at_least(8)),
        "reg": Key("float", REQUIRED, "weight of the mean squared score regulariser", NONNEG),
        "eval_pairs": Key("int", REQUIRED, "held-out pairs per split for the accuracies (0: none)", NONNEG),
        "eval_rows": Key("int", 32, "rows per scoring batch in evaluation", POS),
        "init": Key(
            "str",
            "sft_grm",
            "start from the GRM warm start ('sft_grm': sft's, else config.model.grm.path) or "
            "'random' (config.model.rm: its path when set, else hf_config at random)",
            choices("sft_grm", "random"),
        ),
        "num_micro_batches": Key("int", 1, "gradient accumulation micro-batches per step", POS),
        **OPTIMIZER,
        **_logging(10, 100),
    },
    rules=(_divides("num_micro_batches", "pairs_per_step"),),
)


def _http_judge(sec, path, config):
    """kind = http needs the server's address (an http(s) URL) and model name."""
    if sec.kind != "http":
        return
    for key in ("base_url", "model"):
        if not sec[key]:
            raise ConfigError(f"config.{path}.{key} is missing (needed by judge.kind = 'http')")
    if not sec.base_url.startswith(("http://", "https://")):
        raise bad_value(f"{path}.base_url", sec.base_url, "an http:// or https:// URL")


# Stage 2's judge (config.policy_rl.judge; reward='grm'): the GRM in process or a server over HTTP
# (roles.make_judge; docs/judges.md).
JUDGE = Section(
    {
        "kind": Key(
            "str",
            "grm",
            "grm: the GRM folder (grm_path) in process, on our engine; http: an "
            "OpenAI-compatible /v1/chat/completions server (rollout.http_judge.HTTPJudge), e.g. "
            "python -m grlhfv_jax.serve --model <GRM folder>",
            choices("grm", "http"),
        ),
        "base_url": Key("str?", None, "http: the server's address, e.g. http://127.0.0.1:8000 (required)"),
        "model": Key("str?", None, "http: the model name the server serves (required)"),
        "api_key_env": Key(
            "str",
            "OPENAI_API_KEY",
            "http: environment variable holding the API key (unset: no "
            "Authorization header); the key itself never goes in a config",
        ),
        "timeout_s": Key("float", 120.0, "http: seconds per socket operation (connect, each read)", above(0)),
        "max_retries": Key(
            "int",
            5,
            "http: retries of a failed request (timeouts, 429, 5xx, malformed replies) "
            "before the judgment counts as failed (dropped like an unparsed one)",
            NONNEG,
        ),
        "max_concurrency": Key("int", 8, "http: requests in flight", POS),
        "backoff_s": Key("float", 1.0, "http: first retry's backoff scale (doubles per retry, with jitter)", NONNEG),
        "backoff_max_s": Key("float", 60.0, "http: largest backoff", NONNEG),
        "cache_dir": Key(
            "str?",
            None,
            "http: folder of the persistent judgment cache, relative to the workdir "
            "unless absolute (a rerun sends nothing already answered); None: off",
        ),
    },
    rules=(_http_judge,),
    filled=True,
)


def _random_pairs(sec, path, config):
    if sec.reward == "grm" and sec.pairs == "random" and (sec.num_pairs or 0) < 1:
        raise ConfigError(f"config.{path}.num_pairs must be >= 1 when pairs = 'random'")


GRM_REWARD = ("reward", "grm")  # the keys judging with the GRM needs

POLICY_RL = Section(
    {
        "reward": Key(
            "str", REQUIRED, "'grm' (grouped comparisons by the GRM) or 'rm' (score-only RM)", choices("grm", "rm")
        ),
        "steps": Key("int", REQUIRED, "RL steps", POS),
        "prompts_per_step": Key("int", REQUIRED, "prompts per step", POS),
        "n": Key("int", REQUIRED, "answers sampled per prompt", at_least(2)),
        "max_len": Key("int", REQUIRED, "prompt tokens", at_least(8)),
        "max_new_tokens": Key("int", REQUIRED, "answer tokens", POS),
        "temperature": Key("float", REQUIRED, "sampling temperature", above(0)),
        "pairs": Key(
            "str",
            REQUIRED,
            "pairs the GRM judges: both (orders), one or random",
            choices("both", "one", "random"),
            when=GRM_REWARD,
        ),
        "num_pairs": Key("int?", None, "pairs per group when pairs='random'", POS),
        "aggregator": Key(
            "str",
            REQUIRED,
            "judgments -> reward: mean, win_rate, bradley_terry, borda, instant_runoff, ranked_pairs or spectral",
            registry("grlhfv_jax.rl.grouped.AGGREGATORS"),
            when=GRM_REWARD,
        ),
        "judge_max_new_tokens": Key("int", REQUIRED, "judgment tokens", POS, when=GRM_REWARD),
        "judge_temperature": Key("float", 0.0, "judging temperature (0: greedy)", NONNEG),
        "grm_path": Key("str?", None, "GRM folder to judge with (None: workdir/grm_rl/grm; judge.kind='grm')"),
        "judge": JUDGE,
        "judge_prompts_per_call": Key(
            "int",
            16,
            "prompt groups (n(n-1) pairs each with pairs='both') the GRM judges "
            "per call (reward='grm'; memory only: that call's prefill and KV "
            "cache; the same judgments at any size, greedy or sampled)",
            POS,
        ),
        "score_rows_per_call": Key(
            "int", 320, "answers the RM scores per call (reward='rm'; memory only, the same scores)", POS
        ),
        **GRPO,
        **OPTIMIZER,
        **_logging(5, 25),
    },
    rules=(_random_pairs, _grpo_slices(lambda sec: sec.prompts_per_step)),
)

# The PPO baseline with a critic on the score-only RM (stage policy_ppo_rm; trainers.ppo_update).
POLICY_PPO = Section(
    {
        "steps": Key("int", REQUIRED, "RL steps", POS),
        "prompts_per_step": Key("int", REQUIRED, "prompts per step", POS),
        "n": Key("int", 1, "answers sampled per prompt", POS),
        "max_len": Key("int", REQUIRED, "prompt tokens", at_least(8)),
        "max_new_tokens": Key("int", REQUIRED, "answer tokens", POS),
        "temperature": Key("float", 1.0, "sampling temperature", above(0)),
        "mini_batches": Key(
            "int", REQUIRED, "policy and critic updates per RL step (must divide the prompts per step)", POS
        ),
        "kl_coef": Key("float", 0.02, "weight of the KL to the reference in the token rewards (paper 0.02)", NONNEG),
        "kl_estimator": Key(
            "str", "k1", "the KL per token in the reward: k1, k2, k3, abs", registry("grlhfv_jax.rl.grpo.KL_ESTIMATORS")
        ),
        "clip_eps": Key("float", 0.2, "PPO ratio clip", interval(0, 1, "()")),
        "policy_loss": Key("str", "ppo_clip", "policy loss", registry("grlhfv_jax.rl.grpo.POLICY_LOSSES")),
        "loss_agg_mode": Key(
            "str", "token-mean", "token losses -> loss", registry("grlhfv_jax.rl.grpo.LOSS_AGGREGATIONS")
        ),
        "gamma": Key("float", 1.0, "GAE discount per token", interval(0, 1)),
        "lam": Key("float", 0.95, "GAE lambda", interval(0, 1)),
        "whiten": Key("bool", False, "whiten the advantages over the step's response tokens"),
        "value_clip": Key("float", 5.0, "the critic's value clip around its rollout value (paper 5)", above(0)),
        "score_clip": Key("float", 50.0, "the RM score is clipped to [-score_clip, score_clip] (paper 50)", above(0)),
        "critic_lr": Key(
            "float", 5e-6, "the critic's peak learning rate (paper 5e-6; warm-up and schedule as lr's)", above(0)
        ),
        "critic_weight_decay": Key("float", 0.0, "the critic's AdamW weight decay", NONNEG),
        "num_micro_batches": Key("int", 1, "gradient accumulation micro-batches per update", POS),
        "ref_num_micro_batches": Key(
            "int", 1, "slices of the reference and value passes over a step's rows (memory only)", POS
        ),
        "rollout_num_micro_batches": Key("int", 1, "sampler calls a step's prompts are split into (memory only)", POS),
        "score_rows_per_call": Key("int", 320, "answers the RM scores per call (memory only, the same scores)", POS),
        **OPTIMIZER,
        **_logging(5, 25),
    },
    rules=(_grpo_slices(lambda sec: sec.prompts_per_step),),
)

DPO = Section(
    {
        "steps": Key("int", REQUIRED, "training steps", POS),
        "pairs_per_step": Key("int", REQUIRED, "preference pairs per step", POS),
        "max_len": Key("int", REQUIRED, "tokens per row", at_least(8)),
        "beta": Key("float", REQUIRED, "DPO temperature", above(0)),
        "loss_type": Key("str", "sigmoid", "sigmoid (DPO) or ipo", choices("sigmoid", "ipo")),
        "label_smoothing": Key("float", 0.0, "conservative DPO label smoothing", interval(0, 0.5)),
        "num_micro_batches": Key("int", 1, "gradient accumulation (and reference pass) slices of a step's pairs", POS),
        **OPTIMIZER,
        **_logging(10, 100),
    },
    rules=(_divides("num_micro_batches", "pairs_per_step"),),
)

EVALUATE = Section(
    {
        "prompts": Key("int", REQUIRED, "held-out policy_test prompts", POS),
        "max_len": Key("int", REQUIRED, "prompt tokens", at_least(8)),
        "max_new_tokens": Key("int", REQUIRED, "answer tokens", POS),
        "samples": Key("int", 0, "answers sampled per prompt at temperature 1 (0: greedy only)", NONNEG),
    }
)

REPORT = Section({"enabled": Key("bool", True, "write report.html after the stages")})


def nscale_runs(sec) -> list[tuple[str, dict]]:
    """The nscale section's runs per n, in order: (label, the policy keys it replaces). Label: the
    reward ('grm', 'rm'); with `aggregators` set, each 'grm' run per aggregator is 'grm_<aggregator>'
    (an 'rm' run has no aggregator: one 'rm' run)."""
    runs = []
    for reward in sec.rewards:
        if reward == "grm" and sec.aggregators is not None:
            runs += [(f"grm_{a}", {"reward": "grm", "aggregator": a}) for a in sec.aggregators]
        else:
            runs.append((reward, {"reward": reward}))
    return runs


def _nscale_runs(sec, path, config):
    """Each run's section (nscale.policy with its reward, aggregator and n replaced) is a valid policy_rl
    section."""
    if sec.aggregators is not None and len(set(sec.aggregators)) < len(sec.aggregators):
        raise bad_value(f"{path}.aggregators", sec.aggregators, "aggregators without repeats")
    for _, changes in nscale_runs(sec):
        for n in sec.ns:
            run = build(POLICY_RL, {**sec.policy.to_dict(), **changes, "n": n}, f"{path}.policy")
            run_rules(POLICY_RL, run, f"{path}.policy", config, lambda p: True)


NSCALE = Section(
    {
        "ns": Key("list", REQUIRED, "group sizes n to train with", each(at_least(2), nonempty=True)),
        "rewards": Key(
            "list", REQUIRED, "rewards to train with: 'grm' and / or 'rm'", each(choices("grm", "rm"), nonempty=True)
        ),
        "aggregators": Key(
            "list?",
            None,
            "aggregators the 'grm' runs compare, one run per aggregator and n, named "
            "grm_<aggregator> (nscale/grm_<aggregator>_gain_n<n>); None: the policy's "
            "aggregator alone, runs named grm (nscale/grm_gain_n<n>)",
            each(registry("grlhfv_jax.rl.grouped.AGGREGATORS"), nonempty=True),
        ),
        "policy": POLICY_RL,
    },
    rules=(_nscale_runs,),
)

# stage -> the config section it reads (stages.STAGES: its module)
STAGE_SECTIONS = {
    "data": "data",
    "vision": "vision",
    "sft": "sft",
    "grm_rl": "grm_rl",
    "rm": "rm",
    "policy_rl": "policy_rl",
    "policy_rl_rm": "policy_rl_rm",
    "policy_ppo_rm": "policy_ppo_rm",
    "dpo": "dpo",
    "evaluate": "evaluate",
    "nscale": "nscale",
}


def _stage_sections(sec, path, config):
    for stage in config.stages:
        if STAGE_SECTIONS[stage] not in config:
            raise ConfigError(f"config.{STAGE_SECTIONS[stage]} is missing (needed by the '{stage}' stage)")


def _mesh_shape(v) -> bool:
    return len(v) == 3 and sum(d == -1 for d in v) <= 1 and all(isinstance(d, int) and (d >= 1 or d == -1) for d in v)


# The whole config.
CONFIG = Section(
    {
        "seed": Key("int", REQUIRED, "seed of the models' initialisation, data order and sampling"),
        "workdir": Key("str", "workdir", "output folder when --workdir is not given"),
        "stages": Key("list", REQUIRED, "stages to run, in order", each(choices(*STAGE_SECTIONS), nonempty=True)),
        "mesh_shape": Key(
            "list",
            (1, -1, 1),
            "device mesh over (data, fsdp, tensor); one -1 = the rest",
            Check("3 sizes >= 1 over (data, fsdp, tensor), at most one -1", _mesh_shape),
        ),
        "tensorboard": Key("bool", True, "also write TensorBoard event files"),
        "matmul_precision": Key(
            "str",
            "auto",
            "fp32 matmuls on GPU / TPU: auto (highest when a model computes "
            "in float32), highest, high or default (grlhfv_jax.precision)",
            registry("grlhfv_jax.precision.CHOICES"),
        ),
        "compile_cache_dir": Key(
            "str?",
            "xla_cache",
            "persistent XLA compilation cache: a folder, relative to the "
            "workdir unless absolute; None: off (grlhfv_jax.compile_cache)",
        ),
        "grm_template": Key("str?", None, "GRM prompt template (None: the paper's, rl.grm_reward.GRM_TEMPLATE)"),
        "device_memory_gb": Key(
            "float?",
            None,
            "memory of one accelerator in GB (1e9 B) for --dry_run's fit check (None: what the local device reports)",
            above(0),
        ),
        "data": DATA,
        "image": IMAGE,
        "model": Section({"policy": MODEL, "grm": MODEL, "rm": MODEL}),
        "vision": VISION,
        "sft": SFT,
        "grm_rl": GRM_RL,
        "rm": RM,
        "policy_rl": POLICY_RL,
        "policy_rl_rm": POLICY_RL,
        "policy_ppo_rm": POLICY_PPO,
        "dpo": DPO,
        "evaluate": EVALUATE,
        "report": REPORT,
        "nscale": NSCALE,
    },
    rules=(_stage_sections,),
)
