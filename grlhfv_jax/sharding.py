"""Device mesh, logical-axis rules and placement of parameters and batches.

Mesh axes: "data" (pure data parallelism), "fsdp" (data parallelism that also shards parameters
and optimizer state), "tensor" (tensor parallelism: heads, MLP and vocab split). Parameters carry
`logical_axes` metadata (docs/internal_api.md); `LOGICAL_RULES` maps each logical name to a mesh
axis. A dim whose size the mesh axis does not divide is replicated, so any mesh works for any
model (the sharding changes, the numbers do not).

Multi-host: call `initialize_distributed()` first. Each process reads its own rows of every
global batch (the data sources: host p holds the contiguous block p of each batch's rows, in the
order a single process reads them); `global_batch` makes those per-host rows one global batch
(`jax.make_array_from_process_local_data`: the one place global batches are assembled;
`trainers.loop.place_batch` calls it); `host_values` brings a global array back to the host, the
same numpy on every process; `is_writer()` says whether this process writes files (process 0).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

AXIS_NAMES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# logical name -> mesh axis (None = replicated). FSDP over the model width, tensor parallelism
# over heads / MLP / vocab.
LOGICAL_RULES: dict[str, str | None] = {
    "vocab": "tensor",
    "embed": "fsdp",
    "mlp": "tensor",
    "q_heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "vision_embed": "fsdp",
    "vision_mlp": "tensor",
    "vision_heads": "tensor",
    "vision_patch": None,
    "norm": None,
    "layers": None,  # the leading axis of decoder layers / vision blocks stacked for a scan (VLConfig.scan_layers, scan_vision)
}

# Batch entries whose leading dim is not the batch: replicated on every device.
REPLICATED_BATCH_KEYS = ("pixel_values", "image_grid_thw", "image_embeds", "micro_pixel_values", "micro_image_grid_thw")
# Of those, the ones a host builds for the whole global batch (`trainers.loop.micro_batch_images`
# on several processes: a micro-batch's images are those of global rows, not of one host's rows).
GLOBAL_BATCH_KEYS = ("micro_pixel_values", "micro_image_grid_thw")


# ----------------------------------------------------------------------------- mesh


def make_mesh(mesh_shape: Sequence[int] = (1, -1, 1), axis_names: Sequence[str] = AXIS_NAMES, devices=None) -> Mesh:
    """A mesh with Auto axis types (GSPMD propagation). One entry of `mesh_shape` may be -1: the rest."""
    devices = jax.devices() if devices is None else list(devices)
    shape = [int(s) for s in mesh_shape]
    if len(shape) != len(axis_names):
        raise ValueError(
            f"mesh_shape {tuple(mesh_shape)} has {len(shape)} entries but axis_names "
            f"{tuple(axis_names)} has {len(axis_names)}"
        )
    n = len(devices)
    if shape.count(-1) > 1:
        raise ValueError(f"mesh_shape {tuple(mesh_shape)}: at most one -1 allowed")
    if any(s == 0 or s < -1 for s in shape):
        raise ValueError(f"mesh_shape {tuple(mesh_shape)}: entries must be positive or -1")
    if -1 in shape:
        known = math.prod(s for s in shape if s != -1)
        if n % known:
            raise ValueError(
                f"mesh_shape {tuple(mesh_shape)} does not fit {n} devices ({n} is not divisible by {known})"
            )
        shape[shape.index(-1)] = n // known
    if math.prod(shape) != n:
        raise ValueError(f"mesh_shape {tuple(mesh_shape)} needs {math.prod(shape)} devices but {n} are available")
    return jax.make_mesh(tuple(shape), tuple(axis_names), axis_types=(AxisType.Auto,) * len(shape), devices=devices)


def _axis_size(mesh: Mesh, axis) -> int:
    axes = axis if isinstance(axis, tuple) else (axis,)
    return math.prod(mesh.shape[a] for a in axes)


# ----------------------------------------------------------------------------- specs


def logical_to_spec(
    logical_axes, shape: Sequence[int], mesh: Mesh, rules: Mapping[str, str | tuple | None] = LOGICAL_RULES
) -> PartitionSpec:
    """PartitionSpec for an array of `shape` whose dims are named `logical_axes`.

    A dim is replicated when its name is None, maps to None, maps to a mesh axis of size 1, is not
    divisible by that axis' size, or maps to an axis an earlier dim already uses.
    """
    if logical_axes is None:
        return PartitionSpec()
    logical_axes = tuple(logical_axes)
    if len(logical_axes) != len(shape):
        raise ValueError(
            f"logical_axes {logical_axes} has {len(logical_axes)} names for an array of shape {tuple(shape)}"
        )
    used: set[str] = set()
    spec = []
    for name, size in zip(logical_axes, shape):
        if name is None:
            spec.append(None)
            continue
        if name not in rules:
            raise ValueError(f"unknown logical axis name {name!r}; known: {sorted(rules)}")
        axis = rules[name]
        axes = () if axis is None else (axis if isinstance(axis, tuple) else (axis,))
        for a in axes:
            if a not in mesh.shape:
                raise ValueError(f"logical axis {name!r} maps to mesh axis {a!r}, not in mesh {tuple(mesh.axis_names)}")
        n = math.prod(mesh.shape[a] for a in axes)
        if not axes or n == 1 or size % n or used & set(axes):
            spec.append(None)
            continue
        used |= set(axes)
        spec.append(axes[0] if len(axes) == 1 else axes)
    while spec and spec[-1] is None:
        spec.pop()
    return PartitionSpec(*spec)


# Activations (logical names of `constrain`): rows over the batch axes, heads / MLP / vocab over
# "tensor", the model width replicated (it is FSDP-sharded in the weights only: without a
# constraint GSPMD may carry the weights' "embed" sharding into the residual stream).
ACTIVATION_RULES: dict[str, str | tuple | None] = {
    "act_batch": BATCH_AXES,
    "act_length": None,
    "act_embed": None,
    "act_heads": "tensor",
    "act_mlp": "tensor",
    "act_vocab": "tensor",
}


def constrain(x, logical_axes, mesh: Mesh | None, rules=ACTIVATION_RULES):
    """`jax.lax.with_sharding_constraint` of an activation by its logical axes (ACTIVATION_RULES);
    x unchanged without a mesh or on one device."""
    if mesh is None or mesh.size == 1:
        return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, logical_to_spec(logical_axes, x.shape, mesh, rules)))


def split_axes(size: int, axis_sizes: Mapping[str, int]) -> tuple[str, ...]:
    """The row axes (BATCH_AXES) to split a dim of `size` over: all of them when their product
    divides it, else the largest one that does (e.g. 4,096 patches on data 5 x fsdp 8: fsdp), else ()."""
    axes = [a for a in BATCH_AXES if axis_sizes.get(a, 1) > 1]
    if axes and size % math.prod(axis_sizes[a] for a in axes) == 0:
        return tuple(axes)
    fits = [a for a in axes if size % axis_sizes[a] == 0]
    return (max(fits, key=lambda a: axis_sizes[a]),) if fits else ()


def constrain_split(x, dim: int, mesh: Mesh | None):
    """`x` with dim `dim` split over `split_axes` of the mesh and the rest replicated (the vision
    tower's patches: a call's images have no row axis of their own); x unchanged without a mesh."""
    if mesh is None or mesh.size == 1:
        return x
    axes = split_axes(x.shape[dim], dict(mesh.shape))
    spec = [None] * x.ndim
    spec[dim] = axes if len(axes) > 1 else (axes[0] if axes else None)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, PartitionSpec(*spec)))


def set_activation_mesh(model, mesh: Mesh | None) -> None:
    """Tells a model that constrains its activations (attribute ``activation_mesh``) the mesh its
    parameters are on; other modules are left alone."""
    if hasattr(model, "activation_mesh"):
        model.activation_mesh = mesh


def shard_array(x, logical_axes, mesh: Mesh, rules=LOGICAL_RULES) -> jax.Array:
    """`x` placed on `mesh` according to its logical axes."""
    return jax.device_put(x, NamedSharding(mesh, logical_to_spec(logical_axes, np.shape(x), mesh, rules)))


def _is_var(x) -> bool:
    return isinstance(x, nnx.Variable)


def _var_sharding(v: nnx.Variable, mesh: Mesh, rules) -> NamedSharding:
    axes = v.get_metadata().get("logical_axes") if v.has_metadata("logical_axes") else None
    return NamedSharding(mesh, logical_to_spec(axes, np.shape(v.get_value()), mesh, rules))


def model_shardings(model: nnx.Module, mesh: Mesh, rules=LOGICAL_RULES) -> nnx.State:
    """nnx.State of NamedSharding mirroring `nnx.state(model)`.

    Every Variable with `logical_axes` metadata (Params, and the optimizer moments nnx.Optimizer
    derives from them) follows the rules; every other Variable is replicated.
    """
    state = nnx.state(model)
    return jax.tree.map(lambda v: v.replace(_var_sharding(v, mesh, rules)), state, is_leaf=_is_var)


def shard_model(model: nnx.Module, mesh: Mesh, rules=LOGICAL_RULES) -> nnx.Module:
    """Place every variable of `model` (any NNX module, e.g. a model or an nnx.Optimizer) on `mesh`,
    in place, and give a model its activations' mesh (`set_activation_mesh`). Returns the model."""

    def place(v):
        if not hasattr(v.get_value(), "shape"):  # e.g. the empty state of a frozen group's optimizer
            return v
        return v.replace(jax.device_put(v.get_value(), _var_sharding(v, mesh, rules)))

    nnx.update(model, jax.tree.map(place, nnx.state(model), is_leaf=_is_var))
    set_activation_mesh(model, mesh)
    return model


def model_mesh(model) -> Mesh | None:
    """The mesh the parameters of `model` (an NNX module, or a state / pytree of arrays) are placed
    on (the first NamedSharding found), or None."""
    tree = nnx.state(model, nnx.Param) if isinstance(model, nnx.Module) else model
    for leaf in jax.tree.leaves(tree):
        sh = getattr(leaf, "sharding", None)
        if isinstance(sh, NamedSharding):
            return sh.mesh
    return None


# ----------------------------------------------------------------------------- batches


def batch_spec(mesh: Mesh, ndim: int, batch_axes: Sequence[str] = BATCH_AXES) -> PartitionSpec:
    """Leading dim over the batch axes of `mesh` (those of size > 1), the rest replicated."""
    axes = tuple(a for a in batch_axes if a in mesh.shape and mesh.shape[a] > 1)
    if ndim == 0 or not axes:
        return PartitionSpec()
    return PartitionSpec(axes if len(axes) > 1 else axes[0])


def rows_spec(
    mesh: Mesh, n_rows: int, ndim: int, row_dim: int = 0, head_dim: int | None = None, n_heads: int = 0
) -> PartitionSpec:
    """Dim `row_dim` (n_rows) over the batch axes of size > 1 when they divide it, and dim `head_dim`
    (n_heads) over "tensor" when it divides; the rest replicated (the sampler's rows and KV cache)."""
    spec = [None] * ndim
    axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names and mesh.shape[a] > 1)
    size = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
    if axes and n_rows % size == 0:
        spec[row_dim] = axes if len(axes) > 1 else axes[0]
    if (
        head_dim is not None
        and "tensor" in mesh.axis_names
        and mesh.shape["tensor"] > 1
        and n_heads % mesh.shape["tensor"] == 0
    ):
        spec[head_dim] = "tensor"
    return PartitionSpec(*spec)


def constrain_rows(x, mesh: Mesh | None, row_dim: int = 0):
    """`with_sharding_constraint` of an activation's rows by `rows_spec` (no-op without a mesh)."""
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, rows_spec(mesh, x.shape[row_dim], x.ndim, row_dim)))


def place_rows(x, mesh: Mesh | None) -> jax.Array:
    """device_put a host array with its leading dim over the batch axes (replicated if it does not divide)."""
    x = np.asarray(x)
    if mesh is None:
        return jax.numpy.asarray(x)
    return jax.device_put(x, NamedSharding(mesh, rows_spec(mesh, x.shape[0], x.ndim)))


def place_replicated(x, mesh: Mesh | None) -> jax.Array:
    """device_put a host array replicated on `mesh` (a plain device array without one)."""
    x = np.asarray(x)
    if mesh is None:
        return jax.numpy.asarray(x)
    return jax.device_put(x, NamedSharding(mesh, PartitionSpec()))


def shard_batch(
    batch: Mapping,
    mesh: Mesh,
    *,
    batch_axes: Sequence[str] = BATCH_AXES,
    replicated_keys: Sequence[str] = REPLICATED_BATCH_KEYS,
    process_local: bool = False,
) -> dict:
    """Place a batch dict on `mesh`: leading dim over `batch_axes`; `replicated_keys` and scalars
    replicated; non-array values passed through.

    process_local=False: `batch` is the global batch (identical on every process); each process
    places only its own devices' shards. process_local=True: `batch` holds this process's rows
    (see `process_slice`); the global batch is their concatenation in process order, and the
    replicated entries (pixel_values, image_grid_thw) are gathered from all processes in that order.
    """
    out = {}
    n_batch = _axis_size(mesh, tuple(a for a in batch_axes if a in mesh.shape))
    for key, x in batch.items():
        if x is None or not hasattr(x, "shape") or not hasattr(x, "dtype"):
            out[key] = x
            continue
        x = np.asarray(x) if not isinstance(x, jax.Array) else x
        if key in replicated_keys or x.ndim == 0:
            if process_local and jax.process_count() > 1 and x.ndim > 0:  # scalars: same everywhere
                x = _gather_concat(np.asarray(x))
            out[key] = _place(x, NamedSharding(mesh, PartitionSpec()))
            continue
        rows = x.shape[0] * (jax.process_count() if process_local else 1)
        if rows % n_batch:
            raise ValueError(
                f"shard_batch: {key!r} has {rows} rows (global), not divisible by the "
                f"{n_batch} devices of mesh axes {tuple(batch_axes)}"
            )
        sharding = NamedSharding(mesh, batch_spec(mesh, x.ndim, batch_axes))
        if process_local and jax.process_count() > 1:
            _check_process_contiguous(sharding, rows)
            out[key] = jax.make_array_from_process_local_data(sharding, np.asarray(x), (rows, *x.shape[1:]))
        else:
            out[key] = _place(x, sharding)
    return out


def _place(x, sharding: NamedSharding) -> jax.Array:
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def _gather_concat(x: np.ndarray) -> np.ndarray:
    """Concatenate a per-process array of varying leading size over processes (in process order)."""
    from jax.experimental import multihost_utils

    sizes = np.asarray(multihost_utils.process_allgather(np.asarray([x.shape[0]], np.int32))).reshape(-1)
    padded = np.zeros((int(sizes.max()), *x.shape[1:]), x.dtype)
    padded[: x.shape[0]] = x
    allx = np.asarray(multihost_utils.process_allgather(padded))  # [P, max, ...]
    return np.concatenate([allx[p, : sizes[p]] for p in range(len(sizes))])


def _check_process_contiguous(sharding: NamedSharding, rows: int) -> None:
    """Process p's devices must hold global rows [p*rows/P, (p+1)*rows/P), so that the per-process
    replicated entries line up with the rows."""
    per = rows // jax.process_count()
    for dev, idx in sharding.devices_indices_map((rows,)).items():
        lo, hi, _ = idx[0].indices(rows)
        p = dev.process_index
        if lo < p * per or hi > (p + 1) * per:
            raise ValueError(
                "shard_batch(process_local=True): the mesh does not give each process a "
                "contiguous block of batch rows; build it with make_mesh (process-ordered devices)"
            )


# ----------------------------------------------------------------------------- multi-host


_DIST_ENV = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS")


def initialize_distributed(
    *,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    force: bool = False,
) -> tuple[int, int]:
    """Start jax.distributed when the environment (or the arguments) ask for several processes.

    Triggers: explicit arguments, `force=True`, `JAX_COORDINATOR_ADDRESS` (with `JAX_NUM_PROCESSES`
    and `JAX_PROCESS_ID`), or a cluster JAX detects itself (SLURM / Open MPI with more than one
    task, a multi-host TPU slice). Idempotent. Returns (process_index, process_count).
    """
    env = os.environ
    address = coordinator_address or next((env[k] for k in _DIST_ENV if env.get(k)), None)
    if num_processes is None and env.get("JAX_NUM_PROCESSES"):
        num_processes = int(env["JAX_NUM_PROCESSES"])
    if process_id is None and env.get("JAX_PROCESS_ID"):
        process_id = int(env["JAX_PROCESS_ID"])
    cluster = (
        int(env.get("SLURM_NTASKS", "1")) > 1
        or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
        or len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1
    )
    wanted = force or address is not None or (num_processes or 1) > 1 or cluster
    if wanted and not jax.distributed.is_initialized():
        kwargs = {
            k: v
            for k, v in dict(coordinator_address=address, num_processes=num_processes, process_id=process_id).items()
            if v is not None
        }
        jax.distributed.initialize(**kwargs)
    return jax.process_index(), jax.process_count()


def process_slice(n: int, process_index: int | None = None, process_count: int | None = None) -> slice:
    """This process's contiguous share of `n` global items (n must divide evenly)."""
    p = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if n % count:
        raise ValueError(f"process_slice: {n} items do not split evenly over {count} processes")
    per = n // count
    return slice(p * per, (p + 1) * per)


def is_writer() -> bool:
    """Whether this process writes files (run outputs, reports, exports): process 0 only."""
    return jax.process_index() == 0


def gather_rows(x) -> np.ndarray:
    """A per-host numpy array (leading dims may differ between hosts) -> the concatenation of every
    host's, in process order, the same on every host (host-side; one process: `x` itself). The dtype
    is kept (the gather itself runs through jax: int64 / float64 travel as 32-bit)."""
    x = np.asarray(x)
    if jax.process_count() == 1:
        return x
    return _gather_concat(x).astype(x.dtype, copy=False)


def gather_batch(batch: Mapping, keys: Sequence[str] | None = None) -> dict:
    """`batch` with the arrays of `keys` (all arrays of rank >= 1 if None) replaced by
    `gather_rows` of them: this host's rows -> the global batch's, in process order."""
    out = dict(batch)
    for k, v in batch.items():
        if (
            (keys is None or k in keys)
            and v is not None
            and hasattr(v, "shape")
            and hasattr(v, "dtype")
            and len(np.shape(v)) > 0
            and not isinstance(v, jax.Array)
        ):
            out[k] = gather_rows(v)
    return out


def global_batch(
    host_rows: Mapping,
    mesh: Mesh,
    *,
    batch_axes: Sequence[str] = BATCH_AXES,
    replicated_keys: Sequence[str] = REPLICATED_BATCH_KEYS,
    global_keys: Sequence[str] = GLOBAL_BATCH_KEYS,
) -> dict:
    """This host's rows of a batch -> the global batch as jax arrays on `mesh`.

    Rows: every array of rank >= 1 not in `replicated_keys` holds this host's rows, the contiguous
    block `process_index` of the global rows (what the data sources hand each host); the global
    array is their concatenation in process order, rows split over `batch_axes`
    (`jax.make_array_from_process_local_data`: each host places only its own rows, nothing is
    copied between hosts). When the hosts hold different row counts, or the global rows do not split
    over the batch axes, the rows are gathered (`gather_rows`) and replicated, with a warning.

    Images: `pixel_values [N, D]` / `image_grid_thw [n, 3]` / `image_embeds` are not per-row arrays
    (a row owns a variable run of patches, none for a text row) and are replicated on every device
    (`REPLICATED_BATCH_KEYS`: the vision tower splits the patches itself, `constrain_split`). The
    global entry is every host's, concatenated host-side in process order (`gather_rows`): host p's
    rows are global block p, so that is the images of the global rows in row order, exactly what one
    process would hold. Gathering the (unpadded) image rows on the host, not making them per-host
    device arrays, keeps one layout for one and many hosts, and costs one copy of the step's images
    per host, which a replicated layout holds anyway. Entries in `global_keys` (micro-batch images,
    `trainers.loop.micro_batch_images`, built from the gathered rows) are already global: placed as
    they are. Scalars and non-arrays pass through / are replicated.

    One process: `shard_batch(host_rows, mesh)`. Every host must call this for the same batches (it
    runs collectives)."""
    if jax.process_count() == 1:
        return shard_batch(host_rows, mesh, batch_axes=batch_axes, replicated_keys=replicated_keys)
    axes = tuple(a for a in batch_axes if a in mesh.shape)
    n_batch = _axis_size(mesh, axes)
    row_keys = [
        k
        for k, v in host_rows.items()
        if k not in replicated_keys
        and hasattr(v, "shape")
        and hasattr(v, "dtype")
        and len(np.shape(v)) > 0
        and not (isinstance(v, jax.Array) and not v.is_fully_addressable)
    ]  # already global: as is
    local = sorted({int(np.shape(host_rows[k])[0]) for k in row_keys})
    if len(local) > 1:
        raise ValueError(
            f"global_batch: this host's row arrays disagree on their row count: "
            f"{ {k: np.shape(host_rows[k]) for k in row_keys} }"
        )
    from jax.experimental import multihost_utils

    row_keys.sort()
    shapes = [list(np.shape(host_rows[k])[1:]) for k in row_keys]
    sig = np.asarray(
        [local[0] if local else 0] + [len(row_keys)] + [d for sh in shapes for d in [len(sh)] + sh], np.int32
    )
    sigs = np.asarray(multihost_utils.process_allgather(_pad_to(sig, 64)))  # [P, 64]
    if not (sigs[:, 1:] == sigs[:1, 1:]).all():
        raise ValueError(
            "global_batch: the hosts' row arrays differ in their keys or trailing shapes (this host: "
            f"{dict(zip(row_keys, shapes))}); pad every host's rows to the same width (a fixed max_len)"
        )
    counts = sigs[:, 0]
    total = int(counts.sum())
    even = bool((counts == counts[0]).all()) and total % n_batch == 0
    if not even:
        import warnings

        warnings.warn(
            f"global_batch: per-host rows {counts.tolist()} do not split evenly over the {n_batch} "
            "data-parallel devices: the rows are gathered and replicated (every device computes all "
            "of them)",
            stacklevel=2,
        )
    out = {}
    for key, x in host_rows.items():
        if x is None or not hasattr(x, "shape") or not hasattr(x, "dtype"):
            out[key] = x
            continue
        rep = NamedSharding(mesh, PartitionSpec())
        if isinstance(x, jax.Array) and not x.is_fully_addressable:  # already global
            out[key] = x
        elif x.ndim == 0 or key in global_keys:
            out[key] = _place(np.asarray(x), rep)
        elif key in replicated_keys or not even:
            out[key] = _place(gather_rows(x), rep)
        else:
            sharding = NamedSharding(mesh, batch_spec(mesh, x.ndim, batch_axes))
            _check_process_contiguous(sharding, total)
            x = np.asarray(x)
            out[key] = jax.make_array_from_process_local_data(sharding, x, (total, *x.shape[1:]))
    return out


def _pad_to(v: np.ndarray, n: int) -> np.ndarray:
    if v.size > n:  # a long signature: fold it (a differing one still differs, with high odds)
        v = np.asarray([v[0], int(hash(tuple(v[1:].tolist())) % (2**31))], np.int32)
    return np.concatenate([v, np.full(n - v.size, -1, np.int32)])


def host_values(tree):
    """Global jax arrays (any pytree of them) -> numpy, the whole array on every host (row-sharded
    arrays spanning hosts are all-gathered: `multihost_utils.process_allgather`). Every host must
    call it for the same arrays. Other leaves pass through; one process: `np.asarray`."""

    def one(x):
        if not isinstance(x, jax.Array):
            return x
        if x.is_fully_addressable:
            return np.asarray(x)
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(one, tree)


def host_rows(x) -> np.ndarray:
    """A global array whose rows are the hosts' blocks in process order (what `global_batch` builds
    from per-host rows) -> this host's block, numpy (`host_values`, then `process_slice`)."""
    x = host_values(x)
    return x if jax.process_count() == 1 else x[process_slice(x.shape[0])]


def gather_objects(items: Sequence) -> list:
    """Every host's list of picklable items (records' labels, judgment texts), concatenated in
    process order: the same list on every host (one process: `list(items)`). For the figures a stage
    computes over records each host holds a share of."""
    items = list(items)
    if jax.process_count() == 1:
        return items
    import pickle

    blob = np.frombuffer(pickle.dumps(items), np.uint8)
    sizes = gather_rows(np.asarray([blob.size], np.int32))
    data = gather_rows(blob)
    out, pos = [], 0
    for n in sizes.tolist():
        out += pickle.loads(data[pos : pos + n].tobytes())
        pos += n
    return out
