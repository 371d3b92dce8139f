"""One schema per config section: every key's type, default and meaning, the only place a
default lives. `REQUIRED` keys have none; the stage that reads the section names them when missing.
"""

from __future__ import annotations

from grlhfv_jax.config.schema import REQUIRED, Key

# Keys of every section that trains (loop.make_train_state reads them).
OPTIMIZER = {
    "lr": Key("float", REQUIRED, "peak learning rate (AdamW)"),
    "warmup_ratio": Key("float", 0.03, "fraction of the updates spent warming the learning rate up"),
    "weight_decay": Key("float", 0.01, "AdamW weight decay"),
    "max_grad_norm": Key("float", 1.0, "global gradient-norm clipping"),
    "freeze": Key("list", (), "parameter path prefixes left untrained (e.g. ['visual'])"),
}


def _logging(log_every: int, ckpt_every: int) -> dict:
    """The logging and checkpoint intervals of a training section, with its defaults."""
    return {"log_every": Key("int", log_every, "steps between logged metrics"),
            "ckpt_every": Key("int", ckpt_every, "steps between checkpoints (a rerun resumes from the last)"),
            "ckpt_every_minutes": Key("float", 30.0, "minutes between checkpoints by the clock, beside ckpt_every "
                                                     "(>= 0; 0: off): a long step loses at most this much work")}


# The GRPO loss (grm_rl.grpo_config), shared by stage 1 and stage 2.
GRPO = {
    "mini_batches": Key("int", REQUIRED, "optimizer updates per RL step (must divide the prompts per step)"),
    "kl_coef": Key("float", REQUIRED, "weight of the KL penalty to the reference model"),
    "clip_eps": Key("float", REQUIRED, "PPO ratio clip (lower side; upper side too unless clip_eps_high)"),
    "clip_eps_high": Key("float?", None, "PPO ratio clip, upper side (None: clip_eps)"),
    "clip_ratio_c": Key("float?", None, "dual-clip bound for negative advantages (None: off)"),
    "entropy_coef": Key("float", 0.0, "entropy bonus weight"),
    "num_micro_batches": Key("int", 1, "gradient accumulation micro-batches per update"),
    "ref_num_micro_batches": Key("int", 1, "slices of the reference log-prob pass over a step's rows (memory "
                                           "only; must divide the prompts per step)"),
    "rollout_num_micro_batches": Key("int", 1, "sampler calls a step's prompts are split into, whole prompt groups "
                                               "each (memory: one call's prefill and KV cache; the same samples: each "
                                               "call draws its rows' share of one call's draw); must divide the "
                                               "prompts per step"),
    "advantage_estimator": Key("str", "grpo", "advantages: grpo, grpo_no_std, rloo (grpo.ADVANTAGE_ESTIMATORS)"),
    "kl_estimator": Key("str", "k3", "KL penalty per token: k1, k2, k3 = low_var_kl or abs (grpo.KL_ESTIMATORS)"),
    "loss_agg_mode": Key("str", "token-mean", "token losses -> loss: token-mean, seq-mean-* (grpo.LOSS_AGGREGATIONS)"),
    "policy_loss": Key("str", "grpo", "policy loss: grpo = ppo_clip, the clipped loss (grpo.POLICY_LOSSES)"),
}

MODEL = {
    "hf_config": Key("map", REQUIRED, "Hugging Face config dict of a randomly initialised model"),
    "path": Key("str?", None, "a Hugging Face checkpoint folder to load instead of hf_config"),
    "dtype": Key("str", "float32", "compute dtype (float32, bfloat16, ...)"),
    "param_dtype": Key("str", "float32", "master-weight dtype"),
    "remat": Key("bool", False, "recompute activations in the backward pass (saves memory)"),
    "remat_policy": Key("str", "nothing", "with remat, what each block keeps for the backward pass: nothing, dots "
                                          "(projection outputs) or dots_all (models.layers.REMAT_POLICIES)"),
    "logits_chunk": Key("int", 0, "LM-head columns per piece in the training losses (0: all at once); e.g. 256 keeps "
                                  "rows x 256 x vocab float32 logits live instead of rows x columns x vocab"),
    "vision_block": Key("int?", None, "patches per vision attention block (None: the largest frame the image "
                                      "processor makes, per-frame attention linear in the images; 0: dense)"),
    "vision_chunk": Key("int", 0, "query patches per piece of the vision tower's per-frame attention, whole "
                                  "vision blocks (0: all at once); bounds a trained tower's attention scores, "
                                  "forward and backward, to vision_chunk x heads x 3 vision_block floats"),
    "scan_layers": Key("bool", False, "decoder layers stored stacked [layers, ...] and run by a scan: one layer to "
                                      "compile instead of all (compile time); same math, same hub files"),
    "scan_vision": Key("bool", False, "vision tower blocks stored stacked [blocks, ...] and run by a scan: one "
                                      "block to compile instead of all (compile time of a trained tower); same "
                                      "math, same hub files"),
}

# The splits the stages read (data/world: SPLITS), each a section of config.data.files.
DATA_SPLITS = ("sft_policy", "sft_grm", "grm_train", "grm_test_id", "grm_test_ood", "policy_train", "policy_test")

# One split of preference files on disk (config.data.kind = "files"; grlhfv_jax.data.files_source).
DATA_FILES_SPLIT = {
    "path": Key("str", REQUIRED, "a parquet file / folder, a datasets.save_to_disk folder or a .jsonl file"),
    "format": Key("str", "auto", "auto, parquet, arrow or jsonl (data.preference_files.FORMATS)"),
    "fields": Key("str", "align_anything", "column names: a data.preference_files.FIELD_MAPS name"),
    "on_bad": Key("str", "skip", "a bad record: skip it (counted in the summary) or fail (names file and row)"),
    "limit": Key("int?", None, "keep at most this many records (None: all)"),
}

DATA = {
    "kind": Key("str", "world", "where records come from: world (the synthetic world) or files (config.data.files)"),
    "files": {split: DATA_FILES_SPLIT for split in DATA_SPLITS},
    "tokenizer_dir": Key("str?", None, "files: the tokenizer folder (None: the first config.model.* path)"),
    "read_threads": Key("int", 0, "files: threads that read and decode the next batches while a step runs (0: "
                                  "in the step); the same batches"),
    "image_workers": Key("int", 0, "files: > 0: the read-ahead also runs config.image's processor on each image, "
                                   "in max(read_threads, image_workers) threads, so the step does not (0: in "
                                   "the step); the same batches"),
    "too_long": Key("str", "skip", "files: a record longer than a reading stage's max_len after tokenisation: "
                                   "skip, truncate (its responses; a prompt that alone is too long is skipped) "
                                   "or fail; counted in the summary"),
    "seed": Key("int", REQUIRED, "world: the synthetic world's seed"),
    "image_size": Key("int", REQUIRED, "world: image side in pixels (a multiple of 4, >= 16)"),
    "label_noise": Key("float", REQUIRED, "world: probability that a preference label is flipped, in [0, 0.5)"),
    "vocab_size": Key("int", REQUIRED, "world: size of the demo tokenizer's vocabulary (>= 300)"),
    "dir": Key("str", "", "dataset folder ('' = workdir/data)"),
    "sizes": Key("map", {}, "examples per split (split -> int); unlisted splits get the world's default"),
    "sft_grm_analysis": Key("str", "style", "what the GRM warm start's analysis says: style, facts or none"),
    "sft_grm_first_scores": Key("list", (1, 2, 3, 4, 6, 7, 8, 9), "first scores the GRM warm start writes"),
    "sft_grm_second_scores": Key("list", (), "second scores, drawn independently (() = 10 minus the first)"),
    "sft_grm_opinions": Key("list", (), "the GRM warm start's opinions of wordings: (style description, int)"),
    "sft_grm_opinion_strength": Key("float", 0.5, "probability a judgment follows the opinions, in [0, 1]"),
}

IMAGE = {
    "processor_dir": Key("str?", None, "folder with a preprocessor_config.json (None: Qwen2-VL defaults)"),
    "min_pixels": Key("int?", None, "smallest image area after resizing"),
    "max_pixels": Key("int?", None, "largest image area after resizing"),
    "patch_size": Key("int?", None, "vision patch side in pixels"),
    "merge_size": Key("int?", None, "patches merged per side into one image token"),
    "temporal_patch_size": Key("int?", None, "frames per temporal patch"),
}

VISION = {
    "steps": Key("int", REQUIRED, "training steps"),
    "batch_size": Key("int", REQUIRED, "images per step"),
    "eval_images": Key("int", REQUIRED, "held-out images for the attribute accuracies"),
    "model": Key("str", "policy", "the config.model entry whose tower is trained"),
    **OPTIMIZER, **_logging(25, 100),
}

_SFT_TARGET = {
    "steps": Key("int", REQUIRED, "training steps"),
    "batch_size": Key("int", REQUIRED, "examples per step"),
    "max_len": Key("int", REQUIRED, "tokens per row (>= 8)"),
    "pretrained_vision": Key("bool", False, "copy the tower the 'vision' stage trained"),
    **OPTIMIZER,
}

SFT = {
    "policy": {
        **_SFT_TARGET,
        "data": Key("str", "candidates", "answers to learn: candidates, best or styled"),
        "styles": Key("map", {}, "style -> weight for data='styled' (plain, hedged, praised, praise_only)"),
    },
    "grm": {
        **_SFT_TARGET,
        "vqa_fraction": Key("float", 0.5, "fraction of each batch that is question answering, not judging"),
        "vqa_max_len": Key("int", 64, "tokens per question-answering row (its own part of the batch, "
                                      "narrower than max_len)"),
    },
    **_logging(10, 100),
}

GRM_RL = {
    "steps": Key("int", REQUIRED, "RL steps"),
    "pairs_per_step": Key("int", REQUIRED, "preference pairs judged per step"),
    "group_size": Key("int", REQUIRED, "judgments sampled per prompt (the GRPO group, >= 2)"),
    "max_len": Key("int", REQUIRED, "prompt tokens (>= 16)"),
    "max_new_tokens": Key("int", REQUIRED, "judgment tokens"),
    "temperature": Key("float", REQUIRED, "sampling temperature"),
    "position_debias": Key("bool", REQUIRED, "also judge every pair in the swapped order, label flipped"),
    "consistency_reward": Key("bool", REQUIRED, "reward 1 only when both orders' judgments are right"),
    "pool_orders": Key("bool", False, "one GRPO group per pair holds both orders' judgments (needs "
                                      "position_debias): a position-decided judge gets opposite advantages"),
    "eval_pairs": Key("int", REQUIRED, "held-out pairs per split for the accuracies (0: none)"),
    "eval_every": Key("int", REQUIRED, "steps between in-training accuracy checks"),
    "eval_rows": Key("int", 32, "rows per judging batch in evaluation"),
    **GRPO, **OPTIMIZER, **_logging(5, 25),
}

RM = {
    "steps": Key("int", REQUIRED, "training steps"),
    "pairs_per_step": Key("int", REQUIRED, "preference pairs per step"),
    "max_len": Key("int", REQUIRED, "tokens per row (>= 8)"),
    "reg": Key("float", REQUIRED, "weight of the mean squared score regulariser"),
    "eval_pairs": Key("int", REQUIRED, "held-out pairs per split for the accuracies (0: none)"),
    "eval_rows": Key("int", 32, "rows per scoring batch in evaluation"),
    "init": Key("str", "sft_grm", "start from the GRM warm start ('sft_grm': sft's, else config.model.grm.path) or "
                                    "'random' (config.model.rm: its path when set, else hf_config at random)"),
    "num_micro_batches": Key("int", 1, "gradient accumulation micro-batches per step"),
    **OPTIMIZER, **_logging(10, 100),
}

# Stage 2's judge (config.policy_rl.judge; reward='grm'): the GRM in process or a server over HTTP
# (stages.judging.make_judge; docs/judges.md).
JUDGE = {
    "kind": Key("str", "grm", "grm: the GRM folder (grm_path) in process, on our engine; http: an "
                              "OpenAI-compatible /v1/chat/completions server (rollout.http_judge.HTTPJudge), e.g. "
                              "python -m grlhfv_jax.serve --model <GRM folder>"),
    "base_url": Key("str?", None, "http: the server's address, e.g. http://127.0.0.1:8000 (required)"),
    "model": Key("str?", None, "http: the model name the server serves (required)"),
    "api_key_env": Key("str", "OPENAI_API_KEY", "http: environment variable holding the API key (unset: no "
                                                "Authorization header); the key itself never goes in a config"),
    "timeout_s": Key("float", 120.0, "http: seconds per socket operation (connect, each read)"),
    "max_retries": Key("int", 5, "http: retries of a failed request (timeouts, 429, 5xx, malformed replies) "
                                 "before the judgment counts as failed (dropped like an unparsed one)"),
    "max_concurrency": Key("int", 8, "http: requests in flight"),
    "backoff_s": Key("float", 1.0, "http: first retry's backoff scale (doubles per retry, with jitter)"),
    "backoff_max_s": Key("float", 60.0, "http: largest backoff"),
    "cache_dir": Key("str?", None, "http: folder of the persistent judgment cache, relative to the workdir "
                                   "unless absolute (a rerun sends nothing already answered); None: off"),
}

POLICY_RL = {
    "reward": Key("str", REQUIRED, "'grm' (grouped comparisons by the GRM) or 'rm' (score-only RM)"),
    "steps": Key("int", REQUIRED, "RL steps"),
    "prompts_per_step": Key("int", REQUIRED, "prompts per step"),
    "n": Key("int", REQUIRED, "answers sampled per prompt (>= 2)"),
    "max_len": Key("int", REQUIRED, "prompt tokens (>= 8)"),
    "max_new_tokens": Key("int", REQUIRED, "answer tokens"),
    "temperature": Key("float", REQUIRED, "sampling temperature"),
    "pairs": Key("str", REQUIRED, "pairs the GRM judges: both (orders), one or random (reward='grm')"),
    "num_pairs": Key("int?", None, "pairs per group when pairs='random'"),
    "aggregator": Key("str", REQUIRED, "judgments -> reward: mean, win_rate, bradley_terry, borda, instant_runoff, "
                                       "ranked_pairs or spectral (reward='grm')"),
    "judge_max_new_tokens": Key("int", REQUIRED, "judgment tokens (reward='grm')"),
    "judge_temperature": Key("float", 0.0, "judging temperature (0: greedy)"),
    "grm_path": Key("str?", None, "GRM folder to judge with (None: workdir/grm_rl/grm; judge.kind='grm')"),
    "judge": JUDGE,
    "judge_prompts_per_call": Key("int", 16, "prompt groups (n(n-1) pairs each with pairs='both') the GRM judges "
                                             "per call (reward='grm'; memory only: that call's prefill and KV "
                                             "cache; the same judgments at any size, greedy or sampled)"),
    "score_rows_per_call": Key("int", 320, "answers the RM scores per call (reward='rm'; memory only, the same "
                                           "scores)"),
    **GRPO, **OPTIMIZER, **_logging(5, 25),
}

# The PPO baseline with a critic on the score-only RM (stage policy_ppo_rm; trainers.ppo_update).
POLICY_PPO = {
    "steps": Key("int", REQUIRED, "RL steps"),
    "prompts_per_step": Key("int", REQUIRED, "prompts per step"),
    "n": Key("int", 1, "answers sampled per prompt (>= 1)"),
    "max_len": Key("int", REQUIRED, "prompt tokens (>= 8)"),
    "max_new_tokens": Key("int", REQUIRED, "answer tokens"),
    "temperature": Key("float", 1.0, "sampling temperature"),
    "mini_batches": Key("int", REQUIRED, "policy and critic updates per RL step (must divide the prompts per step)"),
    "kl_coef": Key("float", 0.02, "weight of the KL to the reference in the token rewards (paper 0.02)"),
    "kl_estimator": Key("str", "k1", "the KL per token in the reward: k1, k2, k3, abs (grpo.KL_ESTIMATORS)"),
    "clip_eps": Key("float", 0.2, "PPO ratio clip"),
    "policy_loss": Key("str", "ppo_clip", "policy loss (grpo.POLICY_LOSSES)"),
    "loss_agg_mode": Key("str", "token-mean", "token losses -> loss (grpo.LOSS_AGGREGATIONS)"),
    "gamma": Key("float", 1.0, "GAE discount per token"),
    "lam": Key("float", 0.95, "GAE lambda"),
    "whiten": Key("bool", False, "whiten the advantages over the step's response tokens"),
    "value_clip": Key("float", 5.0, "the critic's value clip around its rollout value (paper 5)"),
    "score_clip": Key("float", 50.0, "the RM score is clipped to [-score_clip, score_clip] (paper 50)"),
    "critic_lr": Key("float", 5e-6, "the critic's peak learning rate (paper 5e-6; warm-up and schedule as lr's)"),
    "critic_weight_decay": Key("float", 0.0, "the critic's AdamW weight decay"),
    "num_micro_batches": Key("int", 1, "gradient accumulation micro-batches per update"),
    "ref_num_micro_batches": Key("int", 1, "slices of the reference and value passes over a step's rows (memory only)"),
    "rollout_num_micro_batches": Key("int", 1, "sampler calls a step's prompts are split into (memory only)"),
    "score_rows_per_call": Key("int", 320, "answers the RM scores per call (memory only, the same scores)"),
    **OPTIMIZER, **_logging(5, 25),
}

DPO = {
    "steps": Key("int", REQUIRED, "training steps"),
    "pairs_per_step": Key("int", REQUIRED, "preference pairs per step"),
    "max_len": Key("int", REQUIRED, "tokens per row (>= 8)"),
    "beta": Key("float", REQUIRED, "DPO temperature"),
    "loss_type": Key("str", "sigmoid", "sigmoid (DPO) or ipo"),
    "label_smoothing": Key("float", 0.0, "conservative DPO label smoothing"),
    "num_micro_batches": Key("int", 1, "gradient accumulation (and reference pass) slices of a step's pairs"),
    **OPTIMIZER, **_logging(10, 100),
}

EVALUATE = {
    "prompts": Key("int", REQUIRED, "held-out policy_test prompts"),
    "max_len": Key("int", REQUIRED, "prompt tokens (>= 8)"),
    "max_new_tokens": Key("int", REQUIRED, "answer tokens"),
    "samples": Key("int", 0, "answers sampled per prompt at temperature 1 (0: greedy only)"),
}

REPORT = {"enabled": Key("bool", True, "write report.html after the stages")}

NSCALE = {
    "ns": Key("list", REQUIRED, "group sizes n to train with (ints >= 2)"),
    "rewards": Key("list", REQUIRED, "rewards to train with: 'grm' and / or 'rm'"),
    "policy": POLICY_RL,
}

# The whole config.
CONFIG = {
    "seed": Key("int", REQUIRED, "seed of the models' initialisation, data order and sampling"),
    "workdir": Key("str", "workdir", "output folder when --workdir is not given"),
    "stages": Key("list", REQUIRED, "stages to run, in order"),
    "mesh_shape": Key("list", (1, -1, 1), "device mesh over (data, fsdp, tensor); one -1 = the rest"),
    "tensorboard": Key("bool", True, "also write TensorBoard event files"),
    "matmul_precision": Key("str", "auto", "fp32 matmuls on GPU / TPU: auto (highest when a model computes "
                                           "in float32), highest, high or default (grlhfv_jax.precision)"),
    "compile_cache_dir": Key("str?", "xla_cache", "persistent XLA compilation cache: a folder, relative to the "
                                                 "workdir unless absolute; None: off (grlhfv_jax.compile_cache)"),
    "grm_template": Key("str?", None, "GRM prompt template (None: the paper's, rl.grm_reward.GRM_TEMPLATE)"),
    "device_memory_gb": Key("float?", None, "memory of one accelerator in GB (1e9 B) for --dry_run's fit check "
                                            "(None: what the local device reports)"),
    "data": DATA,
    "image": IMAGE,
    "model": {"policy": MODEL, "grm": MODEL, "rm": MODEL},
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
}
