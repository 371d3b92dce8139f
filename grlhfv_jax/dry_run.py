"""`--dry_run`: plan a run's memory per device without weights, data or compilation.

Every model of the run is built abstractly (`nnx.eval_shape`) from its config.json: the one in
`config.model.<role>.path` when that folder exists, else `config.model.<role>.hf_config` (the paper
configs hold the published configs, `models.published`). For each stage the run holds in memory
(bytes per device, the mesh `config.mesh_shape` = (data, fsdp, tensor)):

- params: every model the stage holds (trainee, frozen reference, judge / RM), at its param_dtype,
  sharded over fsdp x tensor;
- gradients: the trainee's trainable parameters (not `freeze`), at its param_dtype, over fsdp x tensor;
- optimizer: AdamW's two moments per trainable parameter (optax keeps them in the param dtype), over
  fsdp x tensor;
- activations and kv_cache: those of the step's phase that needs the most (the phases run one
  after the other): the rollout (one sampler call of `rollout_num_micro_batches`: the prefill of
  its prompts, and the cache of its rows: rows x (prompt + bucketed new tokens) x layers x 2 x kv
  heads x head_dim x compute bytes, the engine's layout), stage 2's judging (`judge_prompts_per_call` prompt groups of n(n-1) pairs per call: the prefill
  of the answers over the shared prompt, and their cache), the reference log-prob pass (rows /
  ref_num_micro_batches), a training micro-batch (rows / mini_batches / num_micro_batches), the
  RM's scoring (`score_rows_per_call` rows per call); DPO / RM / SFT: the training step (rows /
  num_micro_batches). Rows over data x fsdp, the cache's heads over tensor.

The activation model (per micro-batch of R rows, T tokens, L layers, hidden H, MLP I, heads A, kv
heads K, head_dim D, compute bytes b, vocabulary V, LM-head window W):
  with remat: L x R T H b (the saved layer inputs; remat_policy "dots" adds the projections' outputs,
  R T (3H + 2 K D + 2I) b per layer, "dots_all" also the attention scores) + one layer's forward and
  backward working set;
  without: L x that working set; a layer's working set = R T (4H + 4 K D + 3 I) b + 3 x R A T^2 x 4
  (float32 scores, probabilities and their gradient); the LM head 2 x R W V x 4 (float32 logits and
  their gradient; W = min(window, logits_chunk) with logits_chunk). Measured against XLA's
  `memory_analysis().temp_size_in_bytes` of the compiled SFT step of tiny models on CPU
  (activations + gradients vs temp): 0.84-1.02 (tests/test_dry_run.py).

The vision tower (`vision_bytes`; one image per row of `image_patches` patches, the largest image
`config.image` lets through; N patches per call, width E, MLP width I, heads A, blocks L_v, per-frame
band of 3 x block keys, Q = N or the `vision_chunk` queries of one piece): linear N (6E + 2I) b + the
banded keys and values 6 N E b; forward: that + 2 float32 score buffers Q A 3block 4; trained
(forward + gradient): with remat L_v N E b + 2 x (linear + 3 buffers), without L_v x that. It runs
over the images a call is given: in the rollout and judging, the sampler's own call before the
prefill (`rollout.engine.encode_images`: the larger of the two is counted, not the sum), with
`vision_chunk` a piece of vision_chunk / patches images at a time; the scored rows;
in the train steps and the reference pass over one micro-batch's images at a time
(`trainers.loop.micro_batch_images`): a GRPO micro-batch's prompts (each prompt's image once per
group; trained unless `freeze` holds "visual"), a DPO / RM micro-batch's rows; SFT: a step's rows.
Its patches are split over `sharding.split_axes` of an image's patches (the row axes data x fsdp
when they divide it; on the pod preset only fsdp: 4,096 patches do not split 40 ways).
Measured against XLA's temp of the tower's compiled forward and forward + gradient on CPU without
remat: 0.73-1.43 (tests/test_dry_run.py). XLA:CPU does not honour the remat of the unrolled
tower (docs/performance.md), but does inside the scanned one (`scan_vision`, as the paper configs
run it): there the remat figure is an upper bound, 1.46x (in pieces) to 1.79x (whole frames) of
XLA's temp for a trained tower of 4 blocks (tests/test_dry_run.py; without remat the measured temp
is 2.2-2.6x the figure). Not measured on an accelerator.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os

import numpy as np

from grlhfv_jax.config import ConfigError

GB = 1e9
DTYPE_BYTES = {"float32": 4, "bfloat16": 2}
ITEMS = ("params", "gradients", "optimizer", "activations", "kv_cache")
GRM_TEMPLATE_TOKENS = 384   # the paper's GRM template is ~330 tokens with Qwen's tokenizer (docs/data.md)


@dataclasses.dataclass
class ModelShape:
    """What the plan needs of one model: parameter counts and the language model's shape."""
    params: int
    vision_params: int
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    param_bytes: int      # bytes per parameter (param_dtype)
    compute_bytes: int    # bytes per activation (dtype)
    remat: bool
    remat_policy: str = "nothing"   # what a remat block keeps (models.layers.REMAT_POLICIES)
    logits_chunk: int = 0           # LM-head columns per piece (0: the whole window at once)
    vision_depth: int = 0           # the vision tower's blocks, width, heads, MLP width
    vision_hidden: int = 0
    vision_heads: int = 0
    vision_intermediate: int = 0
    vision_block: int | None = None  # patches per vision attention block (None: one frame's; 0: dense)
    vision_chunk: int = 0           # query patches per vision attention piece (0: all at once)

    def trainable(self, freeze) -> int:
        return self.params - (self.vision_params if "visual" in tuple(freeze or ()) else 0)


@contextlib.contextmanager
def _quiet_tracer_errors():
    """nnx reads `.sharding` of every traced initial value; on a tracer that raises an AttributeError
    whose message searches the whole trace so far (quadratic: ~15 s for a 2B model). nnx discards
    the message (getattr with a default), so it is skipped while a model is built abstractly."""
    try:
        from jax._src.interpreters import partial_eval as pe
        cls, old = pe.DynamicJaxprTracer, pe.DynamicJaxprTracer._origin_msg
    except (ImportError, AttributeError):
        yield
        return
    cls._origin_msg = lambda self: ""
    try:
        yield
    finally:
        cls._origin_msg = old


def hf_config_of(spec, vocab_size: int | None = None, where: str = "a config.model entry") -> tuple[dict, str]:
    """(config.json dict, where it came from) of a `config.model.*` entry. `vocab_size`: for an
    hf_config without one (the demo's: the tokenizer the data stage trains decides it)."""
    from grlhfv_jax import models
    path = spec.path
    if path and os.path.isfile(os.path.join(path, "config.json")):
        return models.read_config_json(path), os.path.join(path, "config.json")
    if "hf_config" not in spec:
        raise ConfigError(f"{where} has neither a checkpoint folder with config.json (path = {path!r}) nor an "
                         "hf_config: the dry run cannot know its shape")
    hf = spec.hf_config.to_dict() if hasattr(spec.hf_config, "to_dict") else dict(spec.hf_config)
    if "vocab_size" not in hf and "vocab_size" not in (hf.get("text_config") or {}) and vocab_size:
        hf["text_config"] = dict(hf.get("text_config") or {}, vocab_size=int(vocab_size))
    return hf, "hf_config"


_SHAPES: dict = {}


def model_shape(spec, scalar_head: bool = False, vocab_size: int | None = None,
                where: str = "a config.model entry") -> ModelShape:
    """The abstract model of `spec` (a `config.model.*` entry with defaults): nnx.eval_shape, no weights."""
    import jax
    from flax import nnx

    from grlhfv_jax import models
    hf, _ = hf_config_of(spec, vocab_size, where)
    key = (json.dumps(hf, sort_keys=True, default=str), scalar_head, spec.param_dtype)
    if key not in _SHAPES:
        dt = {"float32": jax.numpy.float32, "bfloat16": jax.numpy.bfloat16}
        with _quiet_tracer_errors():
            m = nnx.eval_shape(lambda: models.from_config(hf, rngs=nnx.Rngs(0), scalar_head=scalar_head,
                                                          dtype=dt[spec.dtype], param_dtype=dt[spec.param_dtype]))
        count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))  # noqa: E731
        c = m.config
        _SHAPES[key] = (count(nnx.state(m, nnx.Param)), count(nnx.state(m.visual, nnx.Param)), c)
    total, vis, c = _SHAPES[key]
    return ModelShape(params=total, vision_params=vis, layers=c.num_hidden_layers, hidden=c.hidden_size,
                      intermediate=c.intermediate_size, heads=c.num_attention_heads, kv_heads=c.num_key_value_heads,
                      head_dim=c.head_dim, vocab=c.vocab_size, param_bytes=DTYPE_BYTES[spec.param_dtype],
                      compute_bytes=DTYPE_BYTES[spec.dtype], remat=bool(spec.remat),
                      remat_policy=str(spec.get("remat_policy", "nothing")),
                      logits_chunk=int(spec.get("logits_chunk", 0)), vision_depth=c.vision_depth,
                      vision_hidden=c.vision_hidden_size, vision_heads=c.vision_num_heads,
                      vision_intermediate=c.vision_intermediate_size, vision_block=spec.get("vision_block"),
                      vision_chunk=int(spec.get("vision_chunk", 0)))


def activation_bytes(m: ModelShape, rows: int, tokens: int, window: int, *, backward: bool = True,
                     queries: int | None = None) -> float:
    """Bytes of one jitted forward (+ backward) over [rows, tokens] (module docstring); `window`:
    LM-head columns (0: none, e.g. a scalar-head RM); `queries`: the new tokens of a forward over
    a cached prefix (a prefill after a shared prompt), attending to all `tokens`."""
    R, T, b = rows, tokens, m.compute_bytes
    Q = T if queries is None else queries
    layer = R * Q * (4 * m.hidden + 4 * m.kv_heads * m.head_dim + 3 * m.intermediate) * b \
        + 3 * R * m.heads * Q * T * 4
    head = 2 * R * (min(window, m.logits_chunk) if m.logits_chunk else window) * m.vocab * 4
    if not backward:
        return layer + head
    if m.remat:
        kept = m.hidden   # per token and layer: the block's input; "dots" adds the projections' outputs
        if m.remat_policy in ("dots", "dots_all"):
            kept += 3 * m.hidden + 2 * m.kv_heads * m.head_dim + 2 * m.intermediate
        saved = m.layers * R * T * kept * b
        if m.remat_policy == "dots_all":
            saved += m.layers * R * m.heads * Q * T * 4   # the attention scores too
        return saved + 2 * layer + head
    return m.layers * layer + head


def vision_bytes(m: ModelShape, images: int, patches: int, *, backward: bool) -> float:
    """Bytes of the vision tower over `images` images of `patches` patches each, in one call
    (module docstring); backward: a trained tower's forward + gradient (with remat: the blocks'
    inputs + two blocks' working sets; without: every block's)."""
    N = images * patches
    if N == 0 or m.vision_depth == 0:
        return 0.0
    E, b = m.vision_hidden, m.compute_bytes
    block = patches if m.vision_block is None else m.vision_block     # the per-frame band (0: dense)
    banded = 0 < block < N
    keys = 3 * block if banded else N
    queries = min(N, max(m.vision_chunk // block, 1) * block) if banded and m.vision_chunk else N
    linear = N * (6 * E + 2 * m.vision_intermediate) * b + (2 * N * 3 * E * b if banded else 0)
    scores = queries * m.vision_heads * keys * 4       # one float32 buffer of a piece of queries
    if not backward:
        return linear + 2 * scores                     # scores and probabilities
    work = linear + 3 * scores                         # + the probabilities' gradient
    if m.remat:
        return m.vision_depth * N * E * b + 2 * work
    return m.vision_depth * work


def image_patches(config) -> int:
    """Patches of the largest image `config.image` lets through (max_pixels / patch_size^2; Qwen2-VL's
    default budget, 28 x 28 x 1280 pixels, when max_pixels is not set)."""
    image = config.image if "image" in config else {}
    patch = int(image.get("patch_size") or 14)
    return int(image.get("max_pixels") or 28 * 28 * 1280) // (patch * patch)


def kv_bytes(m: ModelShape, rows: int, tokens: int) -> float:
    return rows * tokens * m.layers * 2 * m.kv_heads * m.head_dim * m.compute_bytes


@dataclasses.dataclass
class StagePlan:
    stage: str
    total: dict            # item -> bytes over the whole mesh (before division)
    per_device: dict       # item -> bytes per device
    notes: list

    @property
    def sum(self) -> float:
        return float(sum(self.per_device.values()))


def _mesh(config) -> tuple[int, int, int]:
    shape = [int(s) for s in config.mesh_shape]
    if -1 in shape:
        import jax
        known = math.prod(s for s in shape if s != -1)
        shape[shape.index(-1)] = max(jax.device_count() // known, 1)
    return tuple(shape)


def plan_stage(config, stage: str) -> StagePlan | None:
    """The memory of `stage`; None for `data` and the stages not planned (vision, evaluate, nscale:
    the synthetic world's)."""
    from grlhfv_jax.rollout.engine import bucket_length
    data, fsdp, tensor = _mesh(config)
    shard_params, shard_rows = fsdp * tensor, data * fsdp
    sec = config[stage] if stage in config else None
    params, trained, acts, kv, notes = 0.0, None, 0.0, 0.0, []

    vocab = config.data.vocab_size + 14 if "data" in config and "vocab_size" in config.data else None

    def kv_shard(m):   # rows over data x fsdp, heads over tensor when they divide
        return shard_rows * (tensor if m.kv_heads % tensor == 0 else 1)

    def shape(role, scalar=False):
        return model_shape(config.model[role], scalar, vocab, where=f"config.model.{role}")

    patches = image_patches(config)
    from grlhfv_jax.sharding import split_axes
    sizes = dict(data=data, fsdp=fsdp, tensor=tensor)
    patch_shards = math.prod(sizes[a] for a in split_axes(patches, sizes))

    def tower(mdl, images, freeze=None, backward=False):   # one image per row (the paper's data)
        # the tower splits a call's patches over `sharding.split_axes` of an image's patches (all
        # the row axes when they divide it, e.g. 8chip; on the pod fsdp only: 4,096 patches do not
        # split 40 ways); x shard_rows / that undoes the division of a phase's activations by rows
        trained = backward and "visual" not in tuple(freeze or ())
        return vision_bytes(mdl, images, patches, backward=trained) * shard_rows / patch_shards

    def sampler_tower(mdl, images):
        # rollout.engine.encode_images: a jitted call of its own before the prefill (so the larger
        # of the two is live, not both), vision_chunk // patches images at a time (all without it)
        return tower(mdl, min(images, max(mdl.vision_chunk // patches, 1)) if mdl.vision_chunk else images)

    def hold(role, scalar=False):
        nonlocal params
        m = shape(role, scalar)
        params += m.params * m.param_bytes
        return m

    if stage == "sft":
        m, best = None, 0.0
        for target in ("policy", "grm"):
            if target in config.sft:
                tc = config.sft[target]
                mt = shape(target)
                a = activation_bytes(mt, tc.batch_size, tc.max_len, tc.max_len) + tower(
                    mt, tc.batch_size, tc.freeze, backward=True)
                if m is None or mt.params * 16 + a > m.params * 16 + best:
                    m, best, opt = mt, a, tc
        if m is None:
            return None
        params, acts, trained = m.params * m.param_bytes, best, (m, opt.freeze)
    elif stage in ("grm_rl", "policy_rl", "policy_rl_rm"):
        role = "grm" if stage == "grm_rl" else "policy"
        m = hold(role)
        hold(role)  # the frozen reference
        if stage == "grm_rl":
            P, G = sec.pairs_per_step * (2 if sec.position_debias else 1), sec.group_size
        else:
            P, G = sec.prompts_per_step, sec.n
        rows, T = P * G, sec.max_len + bucket_length(sec.max_new_tokens)
        for key, whole in (("mini_batches", P), ("ref_num_micro_batches", P), ("rollout_num_micro_batches", P),
                           ("num_micro_batches", P // sec.mini_batches)):
            if whole % sec[key]:
                raise ConfigError(f"config.{stage}.{key} = {sec[key]} must divide {whole} prompts")
        micro = rows // (sec.mini_batches * sec.num_micro_batches)
        ref_rows = rows // sec.ref_num_micro_batches
        calls = sec.rollout_num_micro_batches
        call_prompts, call_rows = P // calls, rows // calls     # one sampler call
        # phases of a step, one after the other: (activations, KV cache) of each
        phases = {
            f"rollout ({calls} call{'s' if calls > 1 else ''}): prefill of {call_prompts} prompts x {sec.max_len} "
            f"tokens + cache of {call_rows} rows x {T}":
                (max(activation_bytes(m, call_prompts, sec.max_len, 1, backward=False), sampler_tower(m, call_prompts)),
                 kv_bytes(m, call_rows, T)),
            # each micro-batch of steps.compute_logprobs / grpo_step runs the tower over its own prompts'
            # images (trainers.loop.micro_batch_images), each prompt's once, not once per sampled row
            f"reference pass: {ref_rows} rows x {T} tokens, tower over {ref_rows // G} images":
                (activation_bytes(m, ref_rows, T, sec.max_new_tokens, backward=False) + tower(m, ref_rows // G), 0.0),
            f"train micro-batch: {micro} rows x {T} tokens, tower over {micro // G} images": (
                activation_bytes(m, micro, T, sec.max_new_tokens)
                + tower(m, micro // G, sec.freeze, backward=True), 0.0),
        }
        if stage == "policy_rl" and sec.reward == "grm":
            g = hold("grm")
            answers = 2 * sec.max_new_tokens + 64          # two answers and the template's tail
            judge_prompt = sec.max_len + GRM_TEMPLATE_TOKENS + answers
            groups = min(sec.prompts_per_step, sec.judge_prompts_per_call)   # judging.GRMJudge's max_prompts
            judge_rows = groups * sec.n * (sec.n - 1)
            jt = judge_prompt + bucket_length(sec.judge_max_new_tokens)
            phases[f"judging: {judge_rows} pairs x {answers} new of {judge_prompt} tokens + cache x {jt}"] = (
                max(activation_bytes(g, judge_rows, judge_prompt, 1, backward=False, queries=answers),
                    sampler_tower(g, groups)),
                kv_bytes(g, judge_rows, jt))
            notes.append(f"judge prompt estimated as {judge_prompt} tokens = {stage}.max_len + {GRM_TEMPLATE_TOKENS} "
                         "template + two answers + 64")
        elif stage == "policy_rl_rm":
            r = hold("rm" if "rm" in config.model else "grm", scalar=True)
            score_rows = min(rows, sec.score_rows_per_call)                # judging.score_batch's rows
            phases[f"RM scoring: {score_rows} rows x {T} tokens"] = (
                activation_bytes(r, score_rows, T, 0, backward=False) + tower(r, score_rows), 0.0)
        worst = max(phases, key=lambda k: phases[k][0] / shard_rows + phases[k][1] / kv_shard(m))
        acts, kv = phases[worst]
        notes.append(f"peak phase: {worst} (per device, activations + cache: " + "; ".join(
            f"{k.split(':')[0]} {(a / shard_rows + c / kv_shard(m)) / GB:.1f} GB" for k, (a, c) in phases.items())
            + ")")
        trained = (m, sec.freeze)
    elif stage == "rm":
        spec = "rm" if "rm" in config.model else "grm"
        m = shape(spec, True)
        params = m.params * m.param_bytes
        rows = 2 * sec.pairs_per_step // sec.num_micro_batches   # one micro-batch, its own images' tower
        acts = activation_bytes(m, rows, sec.max_len, 0) + tower(m, rows, sec.freeze, backward=True)
        trained = (m, sec.freeze)
    elif stage == "dpo":
        m = hold("policy")
        hold("policy")
        rows = 2 * sec.pairs_per_step // sec.num_micro_batches   # one micro-batch, its own images' tower
        acts = activation_bytes(m, rows, sec.max_len, sec.max_len) + tower(m, rows, sec.freeze, backward=True)
        trained = (m, sec.freeze)
    else:
        return None
    m, freeze = trained
    n_train = m.trainable(freeze)
    total = dict(params=params, gradients=n_train * m.param_bytes, optimizer=2 * n_train * m.param_bytes,
                 activations=acts, kv_cache=kv)
    per = dict(params=params / shard_params, gradients=total["gradients"] / shard_params,
               optimizer=total["optimizer"] / shard_params, activations=acts / shard_rows, kv_cache=kv / kv_shard(m))
    return StagePlan(stage, total, per, notes)


def plan(config) -> dict:
    """The plan of a validated config (defaults filled): per stage, per item, bytes per device;
    the peak stage; whether it fits `config.device_memory_gb`."""
    stages = [p for p in (plan_stage(config, s) for s in config.stages) if p is not None]
    limit = config.device_memory_gb
    if limit is None:
        limit = _local_device_gb()
    peak = max(stages, key=lambda p: p.sum) if stages else None
    fits = peak is None or limit is None or peak.sum <= limit * GB
    return {"mesh": dict(zip(("data", "fsdp", "tensor"), _mesh(config))), "device_memory_gb": limit,
            "stages": {p.stage: {"per_device_gb": {k: round(v / GB, 3) for k, v in p.per_device.items()},
                                 "total_gb": round(p.sum / GB, 3), "notes": p.notes} for p in stages},
            "peak_stage": peak.stage if peak else None, "peak_gb": round(peak.sum / GB, 3) if peak else 0.0,
            "largest_item": max(peak.per_device, key=peak.per_device.get) if peak else None,
            "fits": bool(fits)}


def _local_device_gb() -> float | None:
    import jax
    stats = getattr(jax.devices()[0], "memory_stats", lambda: None)()
    return stats["bytes_limit"] / GB if stats and "bytes_limit" in stats else None


def table(result: dict) -> str:
    """The per-device memory table of `plan`'s result, one column per stage."""
    names = list(result["stages"])
    w = max(12, *(len(n) + 2 for n in names)) if names else 12
    lines = [f"mesh data x fsdp x tensor = {' x '.join(str(v) for v in result['mesh'].values())}; "
             f"GB per device (1 GB = 1e9 B)", f"{'item':<14}" + "".join(f"{n:>{w}}" for n in names)]
    for item in ITEMS:
        lines.append(f"{item:<14}" + "".join(f"{result['stages'][n]['per_device_gb'][item]:>{w}.2f}" for n in names))
    lines.append(f"{'total':<14}" + "".join(f"{result['stages'][n]['total_gb']:>{w}.2f}" for n in names))
    for n in names:
        for note in result["stages"][n]["notes"]:
            lines.append(f"  {n}: {note}")
    limit = result["device_memory_gb"]
    verdict = ("fits" if result["fits"] else "DOES NOT FIT") if limit is not None else "device memory unknown"
    lines.append(f"peak: {result['peak_stage']} {result['peak_gb']:.2f} GB of {limit if limit is not None else '?'} "
                 f"GB per device: {verdict} (largest item: {result['largest_item']})")
    return "\n".join(lines)


def run(config) -> int:
    """Validates `config` (placeholders allowed), prints the table and one JSON line; returns the
    exit code: 0 when the peak stage fits the device memory, 1 when it does not."""
    from grlhfv_jax import config as config_schema
    full = config_schema.validate(config)   # as it is when main validated it already
    result = plan(full)
    print(table(result), flush=True)
    print(json.dumps(result, sort_keys=True), flush=True)
    if not result["fits"]:
        print(f"dry run: the '{result['peak_stage']}' stage needs {result['peak_gb']:.2f} GB per device > "
              f"{result['device_memory_gb']} GB; largest item: {result['largest_item']} "
              f"({result['stages'][result['peak_stage']]['per_device_gb'][result['largest_item']]:.2f} GB)", flush=True)
        return 1
    return 0
