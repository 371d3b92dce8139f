"""The layering of docs/architecture.md, checked on the source: a module's imports (parsed, not
run) may only point down. rl/ is math on arrays (no flax, no model, no learner, no stage);
trainers/ and rollout/ never import a stage; models/ import no RL code."""

import ast
import pathlib

import pytest

PKG = pathlib.Path(__file__).resolve().parent.parent / "grlhfv_jax"


def imported(path: pathlib.Path, pkg: str) -> set[str]:
    """Every module a file of package `pkg` imports (relative imports resolved), at any depth."""
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}
    return out


RULES = {  # folder -> module prefixes its files must not import
    "rl": (
        "flax",
        "grlhfv_jax.models",
        "grlhfv_jax.trainers",
        "grlhfv_jax.stages",
        "grlhfv_jax.rollout",
        "grlhfv_jax.data",
    ),
    "trainers": ("grlhfv_jax.stages", "grlhfv_jax.data"),
    "rollout": ("grlhfv_jax.stages", "grlhfv_jax.trainers", "grlhfv_jax.data"),
    "models": ("grlhfv_jax.rl", "grlhfv_jax.trainers", "grlhfv_jax.stages", "grlhfv_jax.rollout", "grlhfv_jax.data"),
}


@pytest.mark.parametrize("folder", sorted(RULES))
def test_layers_import_only_downwards(folder):
    files = sorted((PKG / folder).rglob("*.py"))  # family folders of models/ too
    assert files, folder
    bad = [
        (f.name, m)
        for f in files
        for m in sorted(imported(f, ".".join(("grlhfv_jax",) + f.relative_to(PKG).parent.parts)))
        if any(m == p or m.startswith(p + ".") for p in RULES[folder])
    ]
    assert not bad, f"{folder}/ imports what it must not: {bad}"


def test_the_checker_sees_a_violation(tmp_path):
    """The parser finds absolute, relative and nested imports (so the rule above can fail)."""
    f = tmp_path / "probe.py"
    f.write_text("import flax.nnx\ndef f():\n    from ..models import qwen2_vl\n    from . import grpo\n")
    got = imported(f, "grlhfv_jax.rl")
    assert {"flax.nnx", "grlhfv_jax.models.qwen2_vl", "grlhfv_jax.rl.grpo"} <= got


# The world's own stages (its data and its vision pretraining) may read it; every training and
# evaluation stage reads data through `data.sources` (a real dataset plugs in there).
WORLD_STAGES = ("__init__.py", "data.py", "vision.py")


def test_training_and_evaluation_stages_see_data_only_through_sources():
    files = [f for f in sorted((PKG / "stages").glob("*.py")) if f.name not in WORLD_STAGES]
    assert {"sft.py", "grm_rl.py", "policy_rl.py", "evaluate.py", "rm.py", "dpo.py"} <= {f.name for f in files}
    banned = ("grlhfv_jax.data.world", "grlhfv_jax.data.pipeline", "grlhfv_jax.data.synthetic_tfds")
    bad = [
        (f.name, m)
        for f in files
        for m in sorted(imported(f, "grlhfv_jax.stages"))
        if any(m == p or m.startswith(p + ".") for p in banned)
    ]
    assert not bad, f"stages import the world directly: {bad}"
