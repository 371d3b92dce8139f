"""The paper configs themselves run, shrunk: only the placeholders (checkpoint folders: tiny random
models; data: fixture files) and the sizes are overridden. DPO starts its policy from
config.model.policy.path (no sft section), in micro-batches; the RM trains from
config.model.rm.path; GRPO on the score-only RM scores with that RM's folder as config.model.rm.path
(a run without the rm stage), its reference pass in slices;
stage 1 starts the GRM from config.model.grm.path and stage 2 judges with its output (grm_path)."""

import importlib.util
import os

import numpy as np
import pytest

from grlhfv_jax import config as config_schema
from grlhfv_jax import encoding, main, roles

ROOT = os.path.join(os.path.dirname(__file__), "..")


def load(name):
    path = os.path.join(ROOT, "configs", "paper", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"paper_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config("8chip")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Fixture pairs (parquet), a tokenizer for them, tiny policy and RM checkpoint folders."""
    import sys

    from flax import nnx

    from grlhfv_jax import models
    from grlhfv_jax.data.tokenizer import train_tokenizer
    from test_files_source import SMALL_MODEL, _rows, _write  # tests/ is on sys.path

    sys.path.insert(0, os.path.join(ROOT, "configs"))
    import demo

    root = tmp_path_factory.mktemp("paper_tiny")
    rows = _rows(4)
    pairs, _ = _write(root, "pairs", rows)
    tok = str(root / "tokenizer")
    from grlhfv_jax.rl.grm_reward import build_grm_prompt

    texts = [r[k] for r in rows for k in ("question", "response_1", "response_2")]
    texts += [build_grm_prompt("q", "a", "b", template=demo.DEMO_GRM_TEMPLATE)] * 4  # its words: one token each
    train_tokenizer(texts * 5, tok, vocab_size=400)
    hf = SMALL_MODEL
    codec = encoding.Codec.from_dirs(tok, dict(min_pixels=56 * 56, max_pixels=56 * 56))
    for name, seed in (("policy", 0), ("rm", 1)):
        spec = config_schema.typed_section(config_schema.sections.MODEL, dict(hf_config=hf))
        models.save_pretrained(
            models.from_config(roles.model_config(spec, codec), rngs=nnx.Rngs(seed)), str(root / name)
        )
    return root, pairs, tok


def _shrink(c, root, pairs, tok, **paths):
    for split in c.data.files:
        c.data.files[split].path = pairs
    c.data.tokenizer_dir = tok
    c.image.update(min_pixels=56 * 56, max_pixels=56 * 56)
    for role in c.model:
        c.model[role].update(dtype="float32", remat=False)
    for role, path in paths.items():
        c.model[role].path = path
    c.compile_cache_dir = None
    c.report.enabled = False
    assert config_schema.placeholders(c) == []


def test_paper_dpo_rm_and_rm_grpo_configs_run_shrunk(tiny, tmp_path):
    root, pairs, tok = tiny
    c = load("dpo_qwen2vl_2b")
    _shrink(c, root, pairs, tok, policy=str(root / "policy"))
    c.dpo.update(steps=1, pairs_per_step=2, num_micro_batches=2, max_len=96, log_every=1)
    s = main.run(c, str(tmp_path / "dpo"))
    assert s["data/grm_train/records"] == 4 and np.isfinite(s["dpo/train_loss"])
    assert os.path.isfile(tmp_path / "dpo" / "dpo" / "policy" / "config.json")

    c = load("rm_qwen25vl_7b")
    _shrink(c, root, pairs, tok, rm=str(root / "rm"))
    c.data.files.grm_test_ood.fields = "align_anything"  # the fixture has Align-Anything's columns
    c.rm.update(steps=1, pairs_per_step=2, num_micro_batches=1, max_len=96, eval_pairs=2, eval_rows=4)
    s = main.run(c, str(tmp_path / "rm"))
    assert "baseline_rm/accuracy_id" in s and "baseline_rm/accuracy_ood" in s
    trained_rm = str(tmp_path / "rm" / "rm" / "rm")

    c = load("rm_grpo_qwen2vl_2b")
    _shrink(c, root, pairs, tok, policy=str(root / "policy"), rm=trained_rm)
    c.policy_rl_rm.update(
        steps=1,
        prompts_per_step=2,
        n=2,
        mini_batches=1,
        num_micro_batches=1,
        ref_num_micro_batches=2,
        max_len=96,
        max_new_tokens=4,
    )
    s = main.run(c, str(tmp_path / "rm_grpo"))
    assert s["data/policy_train/records"] == 4 and "time/policy_rl_rm_s" in s
    assert os.path.isfile(tmp_path / "rm_grpo" / "policy_rl_rm" / "policy" / "config.json")


def test_paper_grm_then_policy_configs_run_shrunk(tiny, tmp_path):
    import sys

    sys.path.insert(0, os.path.join(ROOT, "configs"))
    import demo

    root, pairs, tok = tiny
    c = load("grm_qwen25vl_3b")
    _shrink(c, root, pairs, tok, grm=str(root / "policy"))
    with pytest.raises(KeyError, match=r"split 'grm_test_ood': .*no column\(s\) \['more_helpful_response_id'"):
        main.run(c, str(tmp_path / "grm_bt"))  # the OOD split's field map is BeaverTails-V's
    c.data.files.grm_test_ood.fields = "align_anything"
    c.grm_template = demo.DEMO_GRM_TEMPLATE  # the paper's is ~330 tokens: too long for a tiny run
    c.grm_rl.update(
        steps=1,
        pairs_per_step=2,
        group_size=2,
        mini_batches=1,
        num_micro_batches=1,
        ref_num_micro_batches=2,
        max_len=192,
        max_new_tokens=4,
        eval_pairs=2,
        eval_rows=4,
        rollout_num_micro_batches=2,
    )  # 8chip samples in calls: here one pair per call
    s = main.run(c, str(tmp_path / "grm"))
    assert s["data/grm_test_ood/records"] == 4 and "grm/accuracy_ood" in s and "grm/sft_accuracy_id" in s
    grm = tmp_path / "grm" / "grm_rl" / "grm"
    assert os.path.isfile(grm / "config.json")

    c = load("policy_qwen2vl_2b")
    c.policy_rl.grm_path = str(grm)
    _shrink(c, root, pairs, tok, policy=str(root / "policy"))
    c.grm_template = demo.DEMO_GRM_TEMPLATE
    c.policy_rl.update(
        steps=1,
        prompts_per_step=2,
        n=2,
        mini_batches=1,
        num_micro_batches=1,
        ref_num_micro_batches=1,
        max_len=96,
        max_new_tokens=4,
        judge_max_new_tokens=4,
    )
    s = main.run(c, str(tmp_path / "policy"))
    assert "time/policy_rl_s" in s
    assert os.path.isfile(tmp_path / "policy" / "policy_rl" / "policy" / "config.json")
