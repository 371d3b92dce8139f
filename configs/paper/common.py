"""What every paper run shares (../shared/design/method.md, "the paper" below): data splits, model
entries, the stage sections with the paper's hyperparameters, and the mesh presets.

A config file of this folder is `get_config(arg)`; `arg` is a preset and options, comma-separated:

    --config configs/paper/grm_qwen25vl_7b.py            # the default preset, pod
    --config configs/paper/grm_qwen25vl_7b.py:8chip      # one host with 8 accelerators
    --config configs/paper/nsweep_qwen2vl_2b.py:1gpu,n=3

Checkpoint and data paths are "<...>" placeholders: a run refuses to start until each is set on the
command line (`--config.model.grm.path=/ckpt/Qwen2.5-VL-7B-Instruct`,
`--config.data.files.grm_train.path=/data/align-anything/text-image-to-text/train`); `--dry_run`
plans the run's memory without them (the models' shapes come from `models.published`).
Values the paper does not give are marked "not in method.md" with the reason for the choice.
"""

import ml_collections

from grlhfv_jax.models import published

# Mesh presets: (data, fsdp, tensor) and one accelerator's memory (GB, 1e9 B). FSDP shards
# parameters, gradients and optimizer state; rows split over data x fsdp. The pod has 5 hosts of
# 8 GPUs: the paper's batch (360 = 2^3 3^2 5) x 8 judgments or x n answers (n = 3..7) splits evenly
# over 40 devices, not over 32 or 64 (rows that do not divide are replicated: sharding.shard_batch).
# Call sizes (not in method.md: memory only, the same samples, judgments and scores), the smallest
# change from one call that fits the preset (`--dry_run`, docs/paper_runs.md), each call's rows a
# multiple of the data x fsdp devices: `rollout_calls`: stage 1's sampler calls per step
# (grm_rl.rollout_num_micro_batches) by GRM; `policy_rollout_calls`: the same for stage 2 and its RM
# baseline, by policy; `judge_prompts_per_call`: stage 2's prompt groups per GRM judging call (n(n-1)
# pairs each) by (policy, n), default 16; `score_rows_per_call`: the RM baseline's answers per RM
# scoring call by policy, default 320 (8chip: 200, which divides the 1,800 answers of a step: no
# filled tail call).
PRESETS = {
    "1gpu": dict(mesh_shape=(1, 1, 1), device_memory_gb=80.0),  # one 80 GB GPU (H100 / A100-80G)
    "8chip": dict(
        mesh_shape=(1, 8, 1),
        device_memory_gb=80.0,  # one host, 8 x 80 GB, FSDP over all 8
        rollout_calls={"qwen25vl_3b": 3, "qwen25vl_7b": 5, "llava15_7b": 45},
        policy_rollout_calls={"qwen2vl_7b": 3, "qwen25vl_7b": 3, "llava15_7b": 9},
        judge_prompts_per_call={
            ("qwen2vl_7b", 5): 12,
            ("qwen25vl_7b", 5): 12,
            ("qwen2vl_2b", 6): 12,
            ("qwen2vl_2b", 7): 8,
            ("llava15_7b", 5): 4,
        },
        score_rows_per_call={
            "qwen2vl_2b": 200,
            "qwen25vl_3b": 200,
            "qwen2vl_7b": 200,
            "qwen25vl_7b": 200,
            "llava15_7b": 200,
        },
    ),
    # LLaVA-1.5-7B's decoder has 32 kv heads (no GQA): 0.5 MB of KV cache per token, 7x Qwen2.5-VL-7B's,
    # so its sampling and judging run in more, smaller calls (8chip above; the pod: stage 1 in 9 calls
    # of 40 prompts, stage 2 in 3 of 120: one call would need 79.5 of 80 GB, no margin)
    "pod": dict(
        mesh_shape=(5, 8, 1),
        device_memory_gb=80.0,  # 5 hosts x 8 x 80 GB: data over hosts
        rollout_calls={"llava15_7b": 9},
        policy_rollout_calls={"llava15_7b": 3},
    ),
}
DEFAULT_PRESET = "pod"

# The paper's models: config name -> published checkpoint (models.published)
MODELS = {
    "qwen2vl_2b": "Qwen2-VL-2B",
    "qwen25vl_3b": "Qwen2.5-VL-3B-Instruct",
    "qwen2vl_7b": "Qwen2-VL-7B",
    "qwen25vl_7b": "Qwen2.5-VL-7B-Instruct",
    "llava15_7b": "llava-1.5-7b-hf",  # the appendix's LLaVA-1.5-7B (llava-hf's checkpoint layout)
}

# Image budget: not in method.md. At most 1024 image tokens (1024 x 28 x 28 pixels) per image,
# Qwen2-VL's processor defaults otherwise (patch 14, merge 2).
MAX_IMAGE_TOKENS = 1024
# Prompt budgets (tokens): not in method.md. The GRM prompt is the paper's template (~330 tokens),
# the image, the question and both responses; a policy prompt is the image and the question.
# Longer records are skipped and counted by the data stage (config.data.too_long).
GRM_PROMPT_LEN = 3072
POLICY_PROMPT_LEN = 1536
PAIR_ROW_LEN = 2560  # RM / DPO rows: image + question + one response


def parse_arg(arg: str) -> tuple[str, dict]:
    """ "8chip,n=3" -> ("8chip", {"n": "3"}); "" -> (DEFAULT_PRESET, {})."""
    preset, options = DEFAULT_PRESET, {}
    for part in filter(None, (p.strip() for p in (arg or "").split(","))):
        if "=" in part:
            k, v = part.split("=", 1)
            options[k.strip()] = v.strip()
        elif part in PRESETS:
            preset = part
        else:
            raise ValueError(f"config argument {part!r}: expected a preset ({', '.join(PRESETS)}) or key=value")
    return preset, options


def model(name: str, what: str) -> dict:
    """A `config.model.*` entry: the checkpoint path (a placeholder) and its published config (for
    --dry_run); bf16 compute, fp32 master weights (the paper trains in bf16), remat on, the vision
    attention one largest image of queries at a time (vision_chunk: bounded scores in a trained tower),
    the vision blocks under a scan (scan_vision: the trained tower compiles once per block kind, not
    32 times, and keeps remat's memory; the same values; docs/performance.md). LLaVA: no vision scan
    (not implemented for its CLIP tower; 24 blocks of one kind) and one fixed 336 px image (576 tokens)."""
    hf = published.hf_config(name)
    return dict(
        path=f"<{what}: a {name} folder>",
        hf_config=hf,
        dtype="bfloat16",
        param_dtype="float32",
        remat=True,
        vision_chunk=MAX_IMAGE_TOKENS * 4,
        scan_vision=hf["model_type"] != "llava",
    )


def split(what: str, fields: str = "align_anything") -> dict:
    return dict(path=f"<{what}>", fields=fields, on_bad="skip")


def base(arg: str, stages: tuple, workdir: str):
    """The shared part: seed, stages, mesh preset, data splits (Align-Anything train for pairs and
    prompts, its test split in distribution, BeaverTails-V evaluation out of distribution), images."""
    preset, options = parse_arg(arg)
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.workdir = workdir
    c.stages = stages
    c.mesh_shape = PRESETS[preset]["mesh_shape"]
    c.device_memory_gb = PRESETS[preset]["device_memory_gb"]
    c.tensorboard = True
    # the next batches are read, decoded and run through the image processor in 4 threads while a
    # step runs (docs/data.md): a host with 8 accelerators has the cores for it
    c.data = dict(
        kind="files",
        too_long="skip",
        read_threads=4,
        image_workers=4,
        files=dict(
            grm_train=split("Align-Anything text-image-to-text train"),
            grm_test_id=split("Align-Anything text-image-to-text test"),
            grm_test_ood=split("BeaverTails-V evaluation", "beavertails_v_helpful"),
            policy_train=split("Align-Anything text-image-to-text train (prompts)"),
        ),
    )
    c.image = dict(min_pixels=4 * 28 * 28, max_pixels=MAX_IMAGE_TOKENS * 28 * 28)
    c.model = {}
    c.report = dict(enabled=True)
    return c, options


# The paper's GRPO settings (both stages): lr 1e-6 cosine, warm-up 3%, weight decay 0.01, KL 0.02
# (k3, "low_var_kl"), clip 0.2, token-mean loss, temperature 1.0.
GRPO = dict(
    lr=1e-6,
    warmup_ratio=0.03,
    weight_decay=0.01,
    kl_coef=0.02,
    kl_estimator="k3",
    clip_eps=0.2,
    loss_agg_mode="token-mean",
    advantage_estimator="grpo",
    temperature=1.0,
    log_every=1,
    ckpt_every=20,
)
# Batch 360, mini-batch 128 in the paper: 360 is not a multiple of 128, so 3 mini-batches of 120
# (this trainer needs equal mini-batches). Steps: 2 epochs = 2 x (pairs in the split) / 360; the
# data stage prints the count of kept pairs: set --config.<section>.steps for your copy.
BATCH, MINI_BATCHES = 360, 3


def micro_prompts(preset: str, group: int) -> int:
    """Prompts per micro-batch (not in method.md: memory only, the same update): the fewest whose
    rows (prompts x group) split evenly over the preset's data x fsdp devices, dividing the 120
    prompts of a mini-batch. Training micro-batches and the reference pass use it."""
    data, fsdp, _ = PRESETS[preset]["mesh_shape"]
    per = BATCH // MINI_BATCHES
    return next((k for k in range(1, per + 1) if per % k == 0 and (k * group) % (data * fsdp) == 0), per)


def _micro(arg: str, group: int) -> dict:
    k = micro_prompts(parse_arg(arg)[0], group)
    return dict(num_micro_batches=(BATCH // MINI_BATCHES) // k, ref_num_micro_batches=BATCH // k)


def grm_rl(arg: str, grm: str, steps: int = 200) -> dict:
    """Stage 1: GRPO on the GRM `grm` (a MODELS key), 8 judgments per pair, max response 2048, no
    position debiasing (the paper's setting; ours is an option); the preset's rollout calls."""
    calls = PRESETS[parse_arg(arg)[0]].get("rollout_calls", {}).get(grm, 1)
    return dict(
        GRPO,
        steps=steps,
        pairs_per_step=BATCH,
        group_size=8,
        mini_batches=MINI_BATCHES,
        **_micro(arg, 8),
        rollout_num_micro_batches=calls,
        max_len=GRM_PROMPT_LEN,
        max_new_tokens=2048,
        position_debias=False,
        consistency_reward=False,
        # not in method.md: accuracy on 1000 held-out pairs per split before and after
        eval_pairs=1000,
        eval_every=50,
        eval_rows=64,
    )


def policy_rl(arg: str, policy: str, n: int = 5, reward: str = "grm", steps: int = 200) -> dict:
    """Stage 2: GRPO on the policy `policy` (a MODELS key), n samples per prompt, max response 512; the
    GRM judges both orders of every pair and each answer's reward is its mean score (the paper's
    S(y_i)); the preset's call sizes."""
    p = PRESETS[parse_arg(arg)[0]]
    calls = dict(rollout_num_micro_batches=p.get("policy_rollout_calls", {}).get(policy, 1))
    if reward == "grm":
        calls["judge_prompts_per_call"] = p.get("judge_prompts_per_call", {}).get((policy, n), 16)
    else:
        calls["score_rows_per_call"] = p.get("score_rows_per_call", {}).get(policy, 320)
    return dict(
        GRPO,
        reward=reward,
        steps=steps,
        prompts_per_step=BATCH,
        n=n,
        mini_batches=MINI_BATCHES,
        **calls,
        **_micro(arg, n),
        max_len=POLICY_PROMPT_LEN,
        max_new_tokens=512,
        pairs="both",
        aggregator="mean",
        # not in method.md: the judge's budget and temperature in stage 2 (greedy, 1024 tokens)
        judge_max_new_tokens=1024,
        judge_temperature=0.0,
        grm_path="<the stage-1 GRM folder: grm_rl/grm in the workdir of the grm_qwen25vl_7b run>",
    )


def rm() -> dict:
    """The score-only Bradley-Terry RM: -log sigmoid(r_w - r_l) + 0.001 mean(r^2), scalar head on
    the last token, from the GRM's base checkpoint (config.model.rm.path)."""
    # not in method.md: lr, pairs per step and steps of the RM (1 epoch of ~pairs / 64 steps)
    return dict(
        steps=600,
        pairs_per_step=64,
        lr=1e-5,
        warmup_ratio=0.03,
        weight_decay=0.01,
        max_len=PAIR_ROW_LEN,
        reg=0.001,
        init="random",
        eval_pairs=1000,
        eval_rows=64,
        num_micro_batches=16,
        log_every=10,
        ckpt_every=100,
    )


def dpo(arg: str) -> dict:
    """DPO on the same pairs: beta 0.1, lr 1e-6, 2 epochs."""
    # not in method.md: pairs per step (80: its 160 rows split evenly over 8 and 40 devices), so the
    # steps of 2 epochs (2 x pairs / 80); micro-batches of 2 rows per device (memory only)
    data, fsdp, _ = PRESETS[parse_arg(arg)[0]]["mesh_shape"]
    pairs = 80
    return dict(
        steps=1000,
        pairs_per_step=pairs,
        num_micro_batches=pairs // max(data * fsdp // 2, 1),
        lr=1e-6,
        beta=0.1,
        loss_type="sigmoid",
        max_len=PAIR_ROW_LEN,
        warmup_ratio=0.03,
        weight_decay=0.01,
        log_every=10,
        ckpt_every=100,
    )


def grm_config(arg: str, grm: str):
    """Stage 1 for the GRM from checkpoint `grm` (a MODELS key)."""
    c, _ = base(arg, ("data", "grm_rl"), f"runs/grm_{grm}")
    c.model.grm = model(MODELS[grm], "the GRM's start")
    c.grm_rl = grm_rl(arg, grm)
    del c.data.files["policy_train"]
    return c


def grm_sft(arg: str) -> dict:
    """The GRM+SFT baseline (method.md, "Baselines"): the GRM supervised on judgments written from
    Align-Anything's own annotations (its five criteria, each response's rates on them mapped to
    1..10, its critiques: data.grm_targets.ALIGN_ANYTHING), judging only."""
    # not in method.md (the paper prints no SFT settings): lr 1e-5 cosine, warm-up 3%, weight decay
    # 0.01, 16 pairs per step (2 rows of 4096 tokens per device on the 8chip preset: the 7B GRM's
    # activations fit 80 GB, --dry_run), 2 epochs (2 x pairs / 16 steps: the data stage prints the
    # count of kept pairs; set --config.sft.grm.steps for your copy); the judgment after the prompt
    # in GRM_PROMPT_LEN + 1024 tokens
    return dict(
        log_every=10,
        ckpt_every=100,
        grm=dict(
            steps=4000,
            batch_size=16,
            lr=1e-5,
            warmup_ratio=0.03,
            weight_decay=0.01,
            max_len=GRM_PROMPT_LEN + 1024,
            judgments="align_anything",
            vqa_fraction=0.0,
        ),
    )


def grm_sft_config(arg: str, grm: str):
    """The GRM+SFT baseline for the GRM from checkpoint `grm` (a MODELS key): sft.grm on Align-Anything
    train with the field map that keeps each response's rates and critique. Its output
    (workdir/sft/grm) is measured by configs/eval/grm_baselines.py:sft_<grm>."""
    c, _ = base(arg, ("data", "sft"), f"runs/grm_sft_{grm}")
    c.model.grm = model(MODELS[grm], "the GRM's start")
    c.sft = grm_sft(arg)
    c.data.files = dict(sft_grm=split("Align-Anything text-image-to-text train", "align_anything_judgments"))
    return c


def policy_config(arg: str, policy: str, *, n: int | None = None, judge: str = "qwen25vl_7b"):
    """Stage 2 (GRLHF-V) for policy `policy`, judged by the stage-1 GRM of `judge` (method.md does not
    say which GRM judged which policy: the 7B one by default). `n` from the argument (n=...) or 5."""
    _, options = parse_arg(arg)
    n = int(options.get("n", n or 5))
    c, _ = base(arg, ("data", "policy_rl"), f"runs/policy_{policy}_n{n}")
    c.model.policy = model(MODELS[policy], "the policy's start")
    c.model.grm = model(MODELS[judge], "unused: the judge is policy_rl.grm_path")
    c.model.grm.path = None  # the judge's folder is policy_rl.grm_path; this entry gives its dtypes and shape
    c.policy_rl = policy_rl(arg, policy, n=n)
    _only_prompts(c)
    return c


def rm_config(arg: str, base_model: str = "qwen25vl_7b"):
    """The score-only RM baseline's reward model."""
    c, _ = base(arg, ("data", "rm"), f"runs/rm_{base_model}")
    c.model.rm = model(MODELS[base_model], "the RM's start")
    c.rm = rm()
    del c.data.files["policy_train"]
    return c


def rm_grpo_config(arg: str, policy: str, rm_model: str = "qwen25vl_7b"):
    """GRPO with the score-only RM's scores as reward (baseline), same settings as stage 2."""
    c, _ = base(arg, ("data", "policy_rl_rm"), f"runs/rm_grpo_{policy}")
    c.model.policy = model(MODELS[policy], "the policy's start")
    c.model.rm = model(MODELS[rm_model], "the trained RM (rm/rm in the workdir of the rm_qwen25vl_7b run)")
    c.policy_rl_rm = policy_rl(arg, policy, reward="rm")
    del c.policy_rl_rm["grm_path"]
    _only_prompts(c)
    return c


def ppo_rm_config(arg: str, policy: str, rm_model: str = "qwen25vl_7b"):
    """PPO with a critic on the score-only RM's scores (baseline, the paper's Table 2): GAE (gamma 1,
    lambda 0.95), value clip 5, score clip 50, KL 0.02 in the reward (k1), critic lr 5e-6, the
    critic started from the RM (method.md); stage 2's prompts, samples per prompt, lengths, policy
    optimiser and call sizes otherwise (the same responses per step as the GRPO runs)."""
    c, _ = base(arg, ("data", "policy_ppo_rm"), f"runs/ppo_rm_{policy}")
    c.model.policy = model(MODELS[policy], "the policy's start")
    c.model.rm = model(MODELS[rm_model], "the trained RM (rm/rm in the workdir of the rm_qwen25vl_7b run)")
    stage2 = policy_rl(arg, policy, reward="rm")
    shared = (
        "steps",
        "prompts_per_step",
        "n",
        "mini_batches",
        "max_len",
        "max_new_tokens",
        "temperature",
        "lr",
        "warmup_ratio",
        "weight_decay",
        "max_grad_norm",
        "clip_eps",
        "num_micro_batches",
        "ref_num_micro_batches",
        "rollout_num_micro_batches",
        "score_rows_per_call",
    )
    c.policy_ppo_rm = dict(
        {k: stage2[k] for k in shared if k in stage2},
        kl_coef=0.02,
        kl_estimator="k1",
        gamma=1.0,
        lam=0.95,
        value_clip=5.0,
        score_clip=50.0,
        critic_lr=5e-6,
    )
    # the critic's gradients and optimizer sit beside the policy's: the RM scores 64 answers per call
    # (memory only, the same scores) so a 7B policy + 7B critic fit the 8chip preset
    c.policy_ppo_rm["score_rows_per_call"] = 64
    _only_prompts(c)
    return c


def dpo_config(arg: str, policy: str):
    c, _ = base(arg, ("data", "dpo"), f"runs/dpo_{policy}")
    c.model.policy = model(MODELS[policy], "the policy's start")
    c.dpo = dpo(arg)
    for s in ("grm_test_id", "grm_test_ood", "policy_train"):
        del c.data.files[s]
    return c


def _only_prompts(c) -> None:
    for s in ("grm_train", "grm_test_id", "grm_test_ood"):
        del c.data.files[s]
