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

from grlhfv_jax import memory
from grlhfv_jax.config import ConfigError

GB = 1e9
DTYPE_BYTES = {"float32": 4, "bfloat16": 2}
ITEMS = ("params", "gradients", "optimizer", "activations", "kv_cache")


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
    param_bytes: int  # bytes per parameter (param_dtype)
    compute_bytes: int  # bytes per activation (dtype)
    remat: bool
    remat_policy: str = "nothing"  # what a remat block keeps (models.layers.REMAT_POLICIES)
    logits_chunk: int = 0  # LM-head columns per piece (0: the whole window at once)
    vision_depth: int = 0  # the vision tower's blocks, width, heads, MLP width
    vision_hidden: int = 0
    vision_heads: int = 0
    vision_intermediate: int = 0
    vision_block: int | None = None  # patches per vision attention block (None: one frame's; 0: dense)
    vision_chunk: int = 0  # query patches per vision attention piece (0: all at once)

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
        raise ConfigError(
            f"{where} has neither a checkpoint folder with config.json (path = {path!r}) nor an "
            "hf_config: the dry run cannot know its shape"
        )
    hf = spec.hf_config.to_dict() if hasattr(spec.hf_config, "to_dict") else dict(spec.hf_config)
    if "vocab_size" not in hf and "vocab_size" not in (hf.get("text_config") or {}) and vocab_size:
        hf["text_config"] = dict(hf.get("text_config") or {}, vocab_size=int(vocab_size))
    return hf, "hf_config"


_SHAPES: dict = {}


def model_shape(
    spec, scalar_head: bool = False, vocab_size: int | None = None, where: str = "a config.model entry"
) -> ModelShape:
    """The abstract model of `spec` (a `config.model.*` entry with defaults): nnx.eval_shape, no weights."""
    import jax
    from flax import nnx

    from grlhfv_jax import models

    hf, _ = hf_config_of(spec, vocab_size, where)
    key = (json.dumps(hf, sort_keys=True, default=str), scalar_head, spec.param_dtype)
    if key not in _SHAPES:
        dt = {"float32": jax.numpy.float32, "bfloat16": jax.numpy.bfloat16}
        with _quiet_tracer_errors():
            m = nnx.eval_shape(
                lambda: models.from_config(
                    hf,
                    rngs=nnx.Rngs(0),
                    scalar_head=scalar_head,
                    dtype=dt[spec.dtype],
                    param_dtype=dt[spec.param_dtype],
                )
            )
        count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))  # noqa: E731
        c = m.config
        _SHAPES[key] = (count(nnx.state(m, nnx.Param)), count(nnx.state(m.visual, nnx.Param)), c)
    total, vis, c = _SHAPES[key]
    return ModelShape(
        params=total,
        vision_params=vis,
        layers=c.num_hidden_layers,
        hidden=c.hidden_size,
        intermediate=c.intermediate_size,
        heads=c.num_attention_heads,
        kv_heads=c.num_key_value_heads,
        head_dim=c.head_dim,
        vocab=c.vocab_size,
        param_bytes=DTYPE_BYTES[spec.param_dtype],
        compute_bytes=DTYPE_BYTES[spec.dtype],
        remat=bool(spec.remat),
        remat_policy=str(spec.get("remat_policy", "nothing")),
        logits_chunk=int(spec.get("logits_chunk", 0)),
        vision_depth=c.vision_depth,
        vision_hidden=c.vision_hidden_size,
        vision_heads=c.vision_num_heads,
        vision_intermediate=c.vision_intermediate_size,
        vision_block=spec.get("vision_block"),
        vision_chunk=int(spec.get("vision_chunk", 0)),
    )


def activation_bytes(
    m: ModelShape, rows: int, tokens: int, window: int, *, backward: bool = True, queries: int | None = None
) -> float:
    """Bytes of one jitted forward (+ backward) over [rows, tokens] (module docstring); `window`:
    LM-head columns (0: none, e.g. a scalar-head RM); `queries`: the new tokens of a forward over
    a cached prefix (a prefill after a shared prompt), attending to all `tokens`."""
    R, T, b = rows, tokens, m.compute_bytes
    Q = T if queries is None else queries
    layer = R * Q * (4 * m.hidden + 4 * m.kv_heads * m.head_dim + 3 * m.intermediate) * b + 3 * R * m.heads * Q * T * 4
    head = 2 * R * (min(window, m.logits_chunk) if m.logits_chunk else window) * m.vocab * 4
    if not backward:
        return layer + head
    if m.remat:
        kept = m.hidden  # per token and layer: the block's input; "dots" adds the projections' outputs
        if m.remat_policy in ("dots", "dots_all"):
            kept += 3 * m.hidden + 2 * m.kv_heads * m.head_dim + 2 * m.intermediate
        saved = m.layers * R * T * kept * b
        if m.remat_policy == "dots_all":
            saved += m.layers * R * m.heads * Q * T * 4  # the attention scores too
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
    block = patches if m.vision_block is None else m.vision_block  # the per-frame band (0: dense)
    banded = 0 < block < N
    keys = 3 * block if banded else N
    queries = min(N, max(m.vision_chunk // block, 1) * block) if banded and m.vision_chunk else N
    linear = N * (6 * E + 2 * m.vision_intermediate) * b + (2 * N * 3 * E * b if banded else 0)
    scores = queries * m.vision_heads * keys * 4  # one float32 buffer of a piece of queries
    if not backward:
        return linear + 2 * scores  # scores and probabilities
    work = linear + 3 * scores  # + the probabilities' gradient
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
    total: dict  # item -> bytes over the whole mesh (before division)
    per_device: dict  # item -> bytes per device
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
    """The memory of `stage` from what it declares (`memory_phases` at the end of its module: the
    models it holds and trains, the phases of a step, in rows and tokens; `grlhfv_jax.memory`),
    priced with the models' shapes; None for a stage that declares none (data, and the synthetic
    world's vision, evaluate, nscale). A stage with several alternatives (sft's targets, trained one
    after the other) is planned at the largest."""
    from grlhfv_jax import stages

    name = stages.STAGES[stage][1]
    declared = stages.module(stage).memory_phases(config, name) if name in config else []
    plans = [_plan_memory(config, stage, mem) for mem in declared]
    return max(plans, key=lambda p: sum(p.total.values())) if plans else None


def _plan_memory(config, stage: str, mem: memory.Memory) -> StagePlan:
    """Bytes of `mem` (module docstring): parameters of every model held, gradients and optimizer of
    the trained one, activations and KV cache of its largest phase (per device)."""
    data, fsdp, tensor = _mesh(config)
    shard_params, shard_rows = fsdp * tensor, data * fsdp
    vocab = config.data.vocab_size + 14 if "data" in config and "vocab_size" in config.data else None
    shapes = {}

    def shape(model: memory.Model) -> ModelShape:
        if model not in shapes:
            shapes[model] = model_shape(
                config.model[model.role], model.scalar, vocab, where=f"config.model.{model.role}"
            )
        return shapes[model]

    patches = image_patches(config)
    from grlhfv_jax.sharding import split_axes

    sizes = dict(data=data, fsdp=fsdp, tensor=tensor)
    patch_shards = math.prod(sizes[a] for a in split_axes(patches, sizes))

    def tower(mdl, images, backward=False):  # one image per row (the paper's data)
        # the tower splits a call's patches over `sharding.split_axes` of an image's patches (all
        # the row axes when they divide it, e.g. 8chip; on the pod fsdp only: 4,096 patches do not
        # split 40 ways); x shard_rows / that undoes the division of a phase's activations by rows
        trained = backward and "visual" not in tuple(mem.freeze or ())
        return vision_bytes(mdl, images, patches, backward=trained) * shard_rows / patch_shards

    def sampler_tower(mdl, images):
        # rollout.engine.encode_images: a jitted call of its own before the prefill (so the larger
        # of the two is live, not both), vision_chunk // patches images at a time (all without it)
        return tower(mdl, min(images, max(mdl.vision_chunk // patches, 1)) if mdl.vision_chunk else images)

    def phase_bytes(p: memory.Phase) -> tuple[float, float]:  # (activations, KV cache) of one phase
        mdl = shape(p.model)
        lm = activation_bytes(mdl, p.rows, p.tokens, p.window, backward=p.backward, queries=p.queries)
        acts = max(lm, sampler_tower(mdl, p.images)) if p.sampler else lm + tower(mdl, p.images, p.backward)
        return acts, kv_bytes(mdl, p.kv_rows, p.kv_tokens)

    m = shape(mem.trained)
    kv_shard = shard_rows * (tensor if m.kv_heads % tensor == 0 else 1)  # rows; heads over tensor when they divide
    phases = {p.name: phase_bytes(p) for p in mem.phases}
    worst = max(phases, key=lambda k: phases[k][0] / shard_rows + phases[k][1] / kv_shard)
    acts, kv = phases[worst]
    notes = list(mem.notes)
    if len(phases) > 1:
        notes.append(
            f"peak phase: {worst} (per device, activations + cache: "
            + "; ".join(
                f"{k.split(':')[0]} {(a / shard_rows + c / kv_shard) / GB:.1f} GB" for k, (a, c) in phases.items()
            )
            + ")"
        )
    params = sum(shape(h).params * shape(h).param_bytes for h in mem.held)
    train_bytes = sum(t.trainable(mem.freeze) * t.param_bytes for t in [m] + [shape(x) for x in mem.also_trained])
    total = dict(params=params, gradients=train_bytes, optimizer=2 * train_bytes, activations=acts, kv_cache=kv)
    per = dict(
        params=params / shard_params,
        gradients=total["gradients"] / shard_params,
        optimizer=total["optimizer"] / shard_params,
        activations=acts / shard_rows,
        kv_cache=kv / kv_shard,
    )
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
    return {
        "mesh": dict(zip(("data", "fsdp", "tensor"), _mesh(config))),
        "device_memory_gb": limit,
        "stages": {
            p.stage: {
                "per_device_gb": {k: round(v / GB, 3) for k, v in p.per_device.items()},
                "total_gb": round(p.sum / GB, 3),
                "notes": p.notes,
            }
            for p in stages
        },
        "peak_stage": peak.stage if peak else None,
        "peak_gb": round(peak.sum / GB, 3) if peak else 0.0,
        "largest_item": max(peak.per_device, key=peak.per_device.get) if peak else None,
        "fits": bool(fits),
    }


def _local_device_gb() -> float | None:
    import jax

    stats = getattr(jax.devices()[0], "memory_stats", lambda: None)()
    return stats["bytes_limit"] / GB if stats and "bytes_limit" in stats else None


def table(result: dict) -> str:
    """The per-device memory table of `plan`'s result, one column per stage."""
    names = list(result["stages"])
    w = max(12, *(len(n) + 2 for n in names)) if names else 12
    lines = [
        f"mesh data x fsdp x tensor = {' x '.join(str(v) for v in result['mesh'].values())}; "
        f"GB per device (1 GB = 1e9 B)",
        f"{'item':<14}" + "".join(f"{n:>{w}}" for n in names),
    ]
    for item in ITEMS:
        lines.append(f"{item:<14}" + "".join(f"{result['stages'][n]['per_device_gb'][item]:>{w}.2f}" for n in names))
    lines.append(f"{'total':<14}" + "".join(f"{result['stages'][n]['total_gb']:>{w}.2f}" for n in names))
    for n in names:
        for note in result["stages"][n]["notes"]:
            lines.append(f"  {n}: {note}")
    limit = result["device_memory_gb"]
    verdict = ("fits" if result["fits"] else "DOES NOT FIT") if limit is not None else "device memory unknown"
    lines.append(
        f"peak: {result['peak_stage']} {result['peak_gb']:.2f} GB of {limit if limit is not None else '?'} "
        f"GB per device: {verdict} (largest item: {result['largest_item']})"
    )
    return "\n".join(lines)


def run(config) -> int:
    """Validates `config` (placeholders allowed), prints the table and one JSON line; returns the
    exit code: 0 when the peak stage fits the device memory, 1 when it does not."""
    from grlhfv_jax import config as config_schema

    full = config_schema.validate(config)  # as it is when main validated it already
    result = plan(full)
    print(table(result), flush=True)
    print(json.dumps(result, sort_keys=True), flush=True)
    if not result["fits"]:
        print(
            f"dry run: the '{result['peak_stage']}' stage needs {result['peak_gb']:.2f} GB per device > "
            f"{result['device_memory_gb']} GB; largest item: {result['largest_item']} "
            f"({result['stages'][result['peak_stage']]['per_device_gb'][result['largest_item']]:.2f} GB)",
            flush=True,
        )
        return 1
    return 0
