"""The embedded demo: the whole Generative RLHF-V pipeline on tiny Qwen2-VL-architecture models
and the synthetic shapes world, on a laptop CPU, no downloads.

    python -m grlhfv_jax.main --config configs/demo.py --workdir /tmp/grlhfv_demo

Stages: data (world + tokenizer) -> sft (policy and GRM warm starts) -> grm_rl (stage 1: GRPO on
the GRM with the paper's pair reward) -> rm (score-only Bradley-Terry baseline) -> policy_rl
(stage 2: GRPO with grouped-comparison rewards from the GRM) -> policy_rl_rm (the same with the
score-only RM as reward) -> policy_ppo_rm (PPO with a critic on the score-only RM) -> dpo (DPO on
the preference pairs) -> evaluate.
`get_config("smoke")` is a few steps of each (tests). The model family is a switch of the argument:
`configs/demo.py:llava` (or `:smoke,llava`) gives every role a tiny LLaVA-1.5 (CLIP tower + projector
+ Llama, `tiny_llava`) instead of the tiny Qwen2-VL; everything else is the same config.
"""

import ml_collections

# The paper's template (grlhfv_jax.rl.grm_reward.GRM_TEMPLATE) made short: same slots, same
# three-line output format. The tiny demo models pay for every prompt token on a CPU.
DEMO_GRM_TEMPLATE = (
    "Score both responses to the query about the image: split 10 points. Give criteria, analysis, scores.\n"
    "{principles_block}"
    "<image>{question}\n"
    "# Response 1: {response_1}\n"
    "# Response 2: {response_2}\n"
    "Output: Specific Criteria, Analysis, Scores: \\boxed{x, x}."
)


def tiny_qwen2_vl(hidden=64, layers=3, heads=4, kv_heads=2, vision_depth=2, vision_dim=64):
    """An HF Qwen2-VL config dict; vocabulary size and special ids come from the tokenizer."""
    head_dim = hidden // heads
    half = head_dim // 2
    t = half // 4
    section = [t, (half - t) // 2, half - t - (half - t) // 2]
    return dict(
        model_type="qwen2_vl",
        tie_word_embeddings=True,
        text_config=dict(
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            rms_norm_eps=1e-6,
            max_position_embeddings=1024,
            rope_parameters=dict(rope_type="default", mrope_section=section, rope_theta=10000.0),
        ),
        vision_config=dict(
            depth=vision_depth,
            embed_dim=vision_dim,
            hidden_size=hidden,
            num_heads=4,
            mlp_ratio=2,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            in_channels=3,
        ),
    )


def tiny_llava(hidden=64, layers=3, heads=4, kv_heads=2, vision_layers=2, vision_dim=64):
    """An HF LLaVA-1.5 config dict at the demo's scale: 56 px images in 28 px patches (4 image tokens,
    as the Qwen demo's 56 px image after its 2 x 2 merge); vocabulary and special ids come from the tokenizer."""
    return dict(
        model_type="llava",
        tie_word_embeddings=True,
        projector_hidden_act="gelu",
        text_config=dict(
            model_type="llama",
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            rms_norm_eps=1e-6,
            max_position_embeddings=1024,
            rope_theta=10000.0,
        ),
        vision_config=dict(
            model_type="clip_vision_model",
            hidden_size=vision_dim,
            intermediate_size=2 * vision_dim,
            num_hidden_layers=vision_layers,
            num_attention_heads=4,
            image_size=56,
            patch_size=28,
        ),
    )


FAMILIES = {"qwen2_vl": tiny_qwen2_vl, "llava": tiny_llava}


def get_config(arg: str = ""):
    args = set(arg.split(",")) - {""}
    unknown = args - {"smoke"} - set(FAMILIES)
    if unknown:
        raise ValueError(
            f"configs/demo.py: unknown argument(s) {sorted(unknown)}; expected 'smoke' and / or a "
            f"family of {sorted(FAMILIES)}"
        )
    smoke = "smoke" in args
    family = ([a for a in args if a in FAMILIES] or ["qwen2_vl"])[0]
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.workdir = "workdir/demo"
    c.stages = (
        "data",
        "vision",
        "sft",
        "grm_rl",
        "rm",
        "policy_rl",
        "policy_rl_rm",
        "policy_ppo_rm",
        "dpo",
        "evaluate",
    )
    c.mesh_shape = (1, -1, 1)
    c.tensorboard = True
    c.grm_template = DEMO_GRM_TEMPLATE

    # sft_grm_first_scores / sft_grm_second_scores: the warm start's scores are drawn independently,
    # first from (2, 8), second from (3, 7): the first alone decides the order and no judgment ties.
    # With "second = 10 - first" (the world's default) the tiny warm start never learned the rule:
    # its second score was independent of the first, so 1/8 (eight first values) to 1/2 (first from
    # (2, 8)) of its samples tied, and stage 1 learned "never tie" by always writing one pattern:
    # a position-only judge (docs/results.md).
    # sft_grm_analysis: the GRM warm start's analysis describes each response's wording ("style");
    # "facts" (what the image shows, each response right / wrong) was measured worse: the tiny warm
    # start copied the facts from the responses instead of reading the image (docs/results.md)
    # sft_grm_opinions: the warm start reads the wording and has opinions on it, as an instruct VLM
    # judge does, one of them wrong: it likes hedging and dislikes self-praise (3 in 4 of its
    # judgments follow them where they differ). With no opinions (scores independent of
    # everything) its score ignored its own analysis, and stage 1 had to grow that reading from
    # nothing: it did on 2 of 4 runs, late (docs/results.md)
    c.data = dict(
        seed=0,
        image_size=56,
        label_noise=0.05,
        vocab_size=1024,
        dir="",
        sft_grm_analysis="style",
        sft_grm_first_scores=(2, 8),
        sft_grm_second_scores=(3, 7),
        sft_grm_opinions=(("hedges", 1), ("praises itself", -1), ("only praises", -1)),
        sft_grm_opinion_strength=0.5,
        sizes=dict(
            sft_policy=2000,
            sft_grm=3000,
            grm_train=4000,
            grm_test_id=400,
            grm_test_ood=400,
            policy_train=2000,
            policy_test=200,
        ),
    )
    c.image = dict(min_pixels=56 * 56, max_pixels=56 * 56, patch_size=14, merge_size=2, temporal_patch_size=2)

    # one spec per role, each its own hf_config: an override of one role's model changes that role only
    # (a shared nested dict became one shared ConfigDict: --config.model.grm.hf_config... changed all three)
    c.model = {
        role: dict(hf_config=FAMILIES[family](), dtype="float32", param_dtype="float32", remat=False)
        for role in ("policy", "grm", "rm")
    }

    # The vision tower stays at its random initialisation in every stage ("freeze"): it stands in
    # for a pretrained ViT. Trained from scratch on this little data it collapses to a constant
    # output (measured: colour no longer decodable from its embeddings) and the models go blind.
    frozen = ["visual"]
    # ... but at random it is unreadable for the tiny language model (measured: SFT answers colour
    # questions at chance), so the `vision` stage first pretrains it on the world's image labels
    # (colour, count, shape, position; never a question or a preference), like a real VLM's ViT.
    c.vision = dict(
        steps=250,
        batch_size=64,
        lr=1e-3,
        warmup_ratio=0.05,
        eval_images=512,
        model="policy",
        log_every=25,
        ckpt_every=100,
    )
    # sft.grm.steps 800 (was 500): with 500 the warm start learned its opinions on some seeds only
    # (seed 3: position consistency 0.35, style pairs at chance; stage 1 did not repair it and stage 2
    # was reward-hacked); with 800 every warm start of sweep 4 (5 runs) reads the wording (consistency
    # 0.585-0.65, style pairs 0.344) and stage 2 learns on all 5 (docs/results.md). A stronger opinion (0.8) instead
    # made stage 1 collapse to a position-only judge (consistency 0.605 -> 0.33): from a confidently
    # wrong judgment, judging by position is the nearest gain.
    # vqa_max_len 48: the world's question-answer rows are 37-43 tokens (all 2000 of sft_policy)
    c.sft = dict(
        log_every=10,
        ckpt_every=100,
        policy=dict(
            steps=300,
            batch_size=32,
            lr=3e-3,
            max_len=64,
            warmup_ratio=0.05,
            data="styled",
            styles=dict(plain=0.4, hedged=0.25, praised=0.25, praise_only=0.1),
            freeze=frozen,
            pretrained_vision=True,
        ),
        grm=dict(
            steps=800,
            batch_size=32,
            lr=3e-3,
            max_len=160,
            warmup_ratio=0.05,
            vqa_fraction=0.5,
            vqa_max_len=48,
            freeze=frozen,
            pretrained_vision=True,
        ),
    )
    # position_debias: each step judges 16 pairs in both orders with the label flipped (32 prompts, as
    # many as 32 pairs in one order cost): a judge that orders by position gains nothing in any batch
    # pool_orders: one GRPO group per pair holds the 2 x 4 judgments of its two orders. With a group
    # per order, a pair the judge decides by position is right in one order and wrong in the other,
    # every sample alike: both groups have zero spread, zero advantage, and the pair stays decided
    # by position (70-90% of groups by step 65; position consistency 0.39-0.43 on the two runs that
    # failed, 0.58 on both once pooled). Pooled, those judgments get +0.94 / -0.94 (docs/results.md)
    # consistency_reward (paper: each judgment rewarded alone): judgment k of a pair's first order and
    # judgment k of its swapped order both get 1 when both order the pair right, else 0 (J1's reward).
    # Pooled (above), a judgment that follows position gets 0 in both orders while a consistent one
    # gets 1 on the pairs it reads right: the reward sees position habits. Without it seed 4 of
    # sweep 9 ended judging by position (consistency 0.38 / 0.365); with it 0.66 / 0.55, and 7
    # seeds reach 0.55-0.66 with gains +0.115 to +0.29 (docs/results.md, sweep 9)
    # kl_coef 0.1 (paper 0.02): with 0.02 the judge's decisions collapsed (per-group decision entropy
    # 0.7 -> 0.1 by step 90) and froze whatever position habit it had: position consistency < 0.5 on
    # one run in 4-5 of every sweep. With 0.1 the reference keeps the entropy at 0.35-0.4 and all 5
    # runs of sweep 4b reach 0.515-0.615, with the same accuracy gains (docs/results.md)
    c.grm_rl = dict(
        steps=150,
        pairs_per_step=16,
        group_size=4,
        mini_batches=2,
        max_len=120,
        max_new_tokens=36,
        temperature=1.0,
        lr=1e-3,
        warmup_ratio=0.03,
        weight_decay=0.01,
        kl_coef=0.1,
        clip_eps=0.2,
        clip_eps_high=0.2,
        entropy_coef=0.0,
        position_debias=True,
        consistency_reward=True,
        pool_orders=True,
        eval_pairs=200,
        eval_every=40,
        eval_rows=64,
        log_every=5,
        ckpt_every=25,
        freeze=frozen,
    )
    c.rm = dict(
        steps=300,
        pairs_per_step=16,
        lr=1e-3,
        max_len=64,
        reg=0.001,
        init="sft_grm",
        eval_pairs=200,
        eval_rows=64,
        freeze=frozen,
    )
    # kl_coef 0.3 (paper 0.02): the judges are blind to most wrong facts, and with 0.02 the policy
    # drifted into them (wrong positions, garbled text) while it dropped hedging and self-praise:
    # sampled oracle 0.70 -> 0.68; with 0.1 -> 0.71, with 0.3 -> 0.74 (docs/results.md)
    # aggregator win_rate (paper: mean score): as the policy drops hedging and self-praise its answers
    # differ in facts the judge cannot check, and the judge decides 64-79% of pairs by position. With
    # both orders judged, win_rate gives such a pair 1/2 to each answer: only verdicts that hold in
    # both orders move the rewards. The mean score let those position verdicts' score sizes through:
    # noise that GRPO's std normalisation scaled up, and on one seed of three the policy drifted
    # (greedy answers 5.6 -> 7.9 words, oracle gain +0.005); win_rate: +0.064 there, the others
    # unchanged or better (docs/results.md, sweep 6)
    # lr 1.5e-4 (5e-4 until sweep 9): the judges cannot check counts and shapes, so GRPO's updates
    # move those answers at random, by steps that grow with the learning rate, while the signal the
    # judge does carry (hedging, self-praise) is learned well within 60 steps at these rates. Greedy
    # answers' change over the SFT policy's (sweep 9): 5e-4 down to 2.1 paired SE (3 seeds); 2.5e-4
    # down to 2.1 SE (5 seeds); 1.5e-4 within 1.3 SE on 8 of 10 seeds, 2.2 SE on seed 6 and 6.1 on
    # seed 9 (its judge likes an appended position), sampled gains +0.026 to +0.072 (sweeps 9, 10).
    # More KL (0.6, 1.0), fewer steps (30), lr 1e-4, 16 prompts per step, judging at temperature 1
    # or 250 stage-1 steps did not help (docs/results.md): each moves the failing seed, none removes it
    policy = dict(
        reward="grm",
        steps=60,
        prompts_per_step=8,
        n=5,
        mini_batches=1,
        max_len=48,
        max_new_tokens=24,
        temperature=1.0,
        lr=1.5e-4,
        warmup_ratio=0.03,
        weight_decay=0.01,
        kl_coef=0.3,
        clip_eps=0.2,
        pairs="both",
        aggregator="win_rate",
        judge_max_new_tokens=36,
        judge_temperature=0.0,
        log_every=5,
        ckpt_every=20,
        freeze=frozen,
    )
    c.policy_rl = dict(policy)
    c.policy_rl_rm = dict(policy, reward="rm")
    # The paper's PPO baseline on the same RM (Table 2), with the GRPO stages' per-step shapes (8
    # prompts x 5 answers, one update per step) and their KL weight (here in the reward, k1); lr
    # 5e-4, the GRPO stages' until sweep 9 (its greedy answers held there: within 1.7 SE on 7
    # seeds); the critic (from the RM) learns 5x faster, the paper's critic / actor ratio
    # (5e-6 / 1e-6). GAE, value clip 5, score clip 50: the paper's (method.md).
    c.policy_ppo_rm = dict(
        steps=60,
        prompts_per_step=8,
        n=5,
        mini_batches=1,
        max_len=48,
        max_new_tokens=24,
        temperature=1.0,
        lr=5e-4,
        critic_lr=2.5e-3,
        warmup_ratio=0.03,
        weight_decay=0.01,
        kl_coef=0.3,
        kl_estimator="k1",
        clip_eps=0.2,
        gamma=1.0,
        lam=0.95,
        value_clip=5.0,
        score_clip=50.0,
        log_every=5,
        ckpt_every=20,
        freeze=frozen,
    )
    c.dpo = dict(
        steps=150,
        pairs_per_step=16,
        lr=1e-4,
        max_len=64,
        beta=0.1,
        loss_type="sigmoid",
        warmup_ratio=0.03,
        weight_decay=0.01,
        log_every=10,
        ckpt_every=50,
        freeze=frozen,
    )
    c.evaluate = dict(prompts=200, max_len=48, max_new_tokens=24, samples=4)
    c.report = dict(enabled=True)

    if smoke:
        # The short mode (CI, the resume and notebook tests) cuts only counts: steps, the world's sizes
        # and the evaluations' sizes. Every per-step shape is the full run's (n, group sizes, prompts
        # and pairs per step, micro-batches, max lengths, new tokens, model and image sizes, rows per
        # judging / answering call), so it compiles and runs the code paths the README's command runs
        # (a short mode with n = 2 and 2 prompts per step hid a stage-2 crash at n = 5: issue 27).
        # World sizes of 300 (policy_test 200) train the same tokenizer as the full world (it reads
        # at most 300 records of each split), so every row fits the full run's max lengths.
        c.data.sizes = {k: min(v, 300) for k, v in c.data.sizes.items()}
        for k in ("vision", "sft", "grm_rl", "policy_rl", "policy_rl_rm", "policy_ppo_rm", "dpo"):
            c[k].update(log_every=1, ckpt_every=1)  # a checkpoint after every step: the resume tests kill at each
        c.vision.update(steps=2, eval_images=64)
        c.sft.policy.steps = c.sft.grm.steps = 2
        c.grm_rl.update(steps=2, eval_pairs=8, eval_every=1)
        c.rm.update(steps=2, eval_pairs=8, log_every=1, ckpt_every=1)
        for k in ("policy_rl", "policy_rl_rm", "policy_ppo_rm", "dpo"):
            c[k].steps = 2
        c.evaluate.prompts = 8
    return c
