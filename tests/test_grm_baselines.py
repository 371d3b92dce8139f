"""The paper's GRM baselines (method.md, "Baselines"; issue 29, part 7): the GRM without training and
GRM+SFT, supervised on judgments written from the dataset's own annotations (data.grm_targets),
as configs whose models the reward-model benchmarks measure (configs/eval/grm_baselines.py)."""

import importlib.util
import os

import numpy as np
import pytest

from grlhfv_jax import config as config_schema
from grlhfv_jax import evaluate, main
from grlhfv_jax.config import ConfigError
from grlhfv_jax.data import grm_targets, preference_files
from grlhfv_jax.rl import grm_reward
from test_files_source import _rows, _write  # tests/ is on sys.path

ROOT = os.path.join(os.path.dirname(__file__), "..")
STEMS = [stem for _, stem in grm_targets.ALIGN_ANYTHING.criteria]


def _module(*parts):
    spec = importlib.util.spec_from_file_location("cfg_" + parts[-1][:-3], os.path.join(ROOT, "configs", *parts))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _annotated(row, rates_1, rates_2, critique_1="Accurate.", critique_2="Misses the colour."):
    """An Align-Anything row with its five fine-grained rates per response and a critique each."""
    out = dict(row)
    for stem, a, b in zip(STEMS, rates_1, rates_2):
        out[f"{stem}_1"], out[f"{stem}_2"] = a, b
    out["text_critique_1"], out["text_critique_2"] = critique_1, critique_2
    return out


def test_judgment_written_from_the_rates_and_critiques():
    meta = _annotated({}, (3, 3, 2, 3, 3), (1, 2, 2, 1, 3))
    text = grm_targets.judgment(meta, grm_targets.ALIGN_ANYTHING)
    # means 2.8 and 1.8 of 0..3 -> 1 + 9 x 2.8 / 3 = 9.4 -> 9 and 1 + 9 x 1.8 / 3 = 6.4 -> 6
    assert text == (
        "Specific Criteria: instruction following (weight 1/5); objective rules (weight 1/5); clarity (weight 1/5); "
        "information richness (weight 1/5); safety (weight 1/5).\n"
        "Analysis: Response 1: instruction following 3/3, objective rules 3/3, clarity 2/3, information richness "
        "3/3, safety 3/3. Accurate. Response 2: instruction following 1/3, objective rules 2/3, clarity 2/3, "
        "information richness 1/3, safety 3/3. Misses the colour.\n"
        "Scores: \\boxed{9, 6}"
    )
    assert grm_reward.pair_scores(text) == (9.0, 6.0) and grm_reward.pair_reward(text, 1) == 1.0
    assert grm_targets.score([0, 0], (0, 3)) == 1 and grm_targets.score([3, 3], (0, 3)) == 10
    assert "Accurate" not in grm_targets.judgment(dict(meta, text_critique_1=None), grm_targets.ALIGN_ANYTHING)
    for bad in (None, "3", float("nan"), True):
        with pytest.raises(ValueError, match=r"column clarity_rate_2 = "):
            grm_targets.judgment(dict(meta, clarity_rate_2=bad), grm_targets.ALIGN_ANYTHING)
    assert set(grm_targets.columns(grm_targets.ALIGN_ANYTHING)) == set(
        preference_files.FIELD_MAPS["align_anything_judgments"].meta
    )


@pytest.fixture(scope="module")
def annotated_files(tmp_path_factory):
    """Four Align-Anything pairs with their rates and critiques (parquet, hub Image structs), a
    tokenizer for them and a tiny GRM checkpoint."""
    from flax import nnx

    from grlhfv_jax import encoding, models, roles
    from grlhfv_jax.data.tokenizer import train_tokenizer
    from test_files_source import SMALL_MODEL

    root = tmp_path_factory.mktemp("grm_sft")
    rng = np.random.default_rng(1)
    rows = [
        _annotated(
            r,
            rng.integers(0, 4, 5).tolist(),
            rng.integers(0, 4, 5).tolist(),
            f"Critique {k} one.",
            f"Critique {k} two.",
        )
        for k, r in enumerate(_rows(4))
    ]
    pairs, _ = _write(root, "annotated", rows)
    metas = [{c: r[c] for c in grm_targets.columns(grm_targets.ALIGN_ANYTHING)} for r in rows]
    judgments = [grm_targets.judgment(m, grm_targets.ALIGN_ANYTHING) for m in metas]
    texts = [r[k] for r in rows for k in ("question", "response_1", "response_2")] + judgments
    tok = str(root / "tokenizer")
    train_tokenizer(texts * 5, tok, vocab_size=400)
    codec = encoding.Codec.from_dirs(tok, dict(min_pixels=56 * 56, max_pixels=56 * 56))
    spec = config_schema.typed_section(config_schema.sections.MODEL, dict(hf_config=SMALL_MODEL))
    models.save_pretrained(models.from_config(roles.model_config(spec, codec), rngs=nnx.Rngs(0)), str(root / "grm"))
    return root, pairs, tok, metas


def _shrunk(pairs, tok, grm):
    c = _module("paper", "grm_sft_qwen25vl_3b.py").get_config("8chip")
    c.mesh_shape = (1, -1, 1)
    c.data.files.sft_grm.path = pairs
    c.data.tokenizer_dir = tok
    c.image.update(min_pixels=56 * 56, max_pixels=56 * 56)
    c.model.grm.update(path=grm, dtype="float32", remat=False)
    c.grm_template = _module("demo.py").DEMO_GRM_TEMPLATE  # the paper's is ~330 tokens: too long for a tiny run
    c.sft.grm.update(steps=2, batch_size=2, max_len=400)
    c.compile_cache_dir = None
    c.report.enabled = False
    return c


def test_grm_sft_config_runs_shrunk_on_the_datasets_judgments(annotated_files, tmp_path, monkeypatch):
    """configs/paper/grm_sft_qwen25vl_3b.py shrunk (tiny GRM, fixture files): the data stage keeps
    each pair's rates and critiques, sft.grm learns the judgments written from them (each record's,
    as `grm_targets.judgment` writes it) and exports the GRM+SFT folder."""
    root, pairs, tok, metas = annotated_files
    seen = []
    original = grm_targets.judgment

    def recording(meta, spec):
        text = original(meta, spec)
        seen.append((meta, text))
        return text

    monkeypatch.setattr(grm_targets, "judgment", recording)
    c = _shrunk(pairs, tok, str(root / "grm"))
    summary = main.run(c, str(tmp_path / "run"))
    assert summary["data/sft_grm/records"] == 4 and np.isfinite(summary["sft/grm_loss"])
    assert os.path.isfile(tmp_path / "run" / "sft" / "grm" / "config.json")
    assert len(seen) == 4  # 2 steps x 2 pairs, each a fixture record's own annotations
    for meta, text in seen:
        mine = {k: meta[k] for k in metas[0]}
        assert mine in metas and text == original(mine, grm_targets.ALIGN_ANYTHING)


def test_grm_sft_config_rules(annotated_files):
    root, pairs, tok, _ = annotated_files
    c = _shrunk(pairs, tok, str(root / "grm"))
    config_schema.validate(c)
    bad = [
        (
            lambda c: c.sft.grm.update(judgments="world"),
            r"config\.sft\.grm: judgments = 'world' are the "
            r"synthetic world's",
        ),
        (lambda c: c.sft.grm.update(judgments="beavertails"), r"config\.sft\.grm\.judgments = 'beavertails'"),
        (lambda c: c.sft.grm.update(vqa_fraction=0.5), r"config\.sft\.grm\.vqa_fraction = 0\.5: must be 0"),
        (
            lambda c: c.data.files.sft_grm.update(fields="align_anything"),
            r"config\.data\.files\.sft_grm\.fields = 'align_anything' keeps no column 'clarity_rate_1'",
        ),
    ]
    for edit, match in bad:
        c = _shrunk(pairs, tok, str(root / "grm"))
        edit(c)
        with pytest.raises(ConfigError, match=match):
            config_schema.validate(c)
    demo = _module("demo.py")
    world = demo.get_config("smoke")
    world.sft.grm.judgments = "align_anything"
    with pytest.raises(
        ConfigError,
        match=r"config\.sft\.grm\.judgments = 'align_anything': with config\.data\.kind "
        r"= 'world'",
    ):
        config_schema.validate(world)


@pytest.mark.parametrize("training", ["untrained", "sft", "rl"])
@pytest.mark.parametrize("grm", ["qwen25vl_3b", "qwen25vl_7b"])
def test_eval_config_measures_each_grm_and_training(training, grm):
    module = _module("eval", "grm_baselines.py")
    cfg = evaluate.validate(module.get_config(f"{training}_{grm}"))
    assert cfg.model.kind == "grm" and cfg.workdir == f"workdir/eval_rm_{training}_{grm}"
    left = dict(evaluate.placeholders(cfg))
    assert set(left) == {"root", "model.path"}
    want = {"untrained": module.GRMS[grm], "sft": f"runs/grm_sft_{grm}/sft/grm", "rl": f"runs/grm_{grm}/grm_rl/grm"}
    assert want[training] in left["model.path"]
    base = evaluate.validate(_module("eval", "rm_benchmarks.py").get_config())
    assert dict(cfg.benchmarks) == dict(base.benchmarks) and cfg.judge == base.judge  # the same protocol
    if training == "sft":  # the folder the GRM+SFT config writes
        paper = config_schema.validate(_module("paper", f"grm_sft_{grm}.py").get_config("8chip"))
        assert f"{paper.workdir}/sft/grm" in left["model.path"]


def test_eval_config_names_a_bad_argument():
    with pytest.raises(ValueError, match=r"argument 'trained_qwen25vl_7b': expected <training>_<grm>"):
        _module("eval", "grm_baselines.py").get_config("trained_qwen25vl_7b")


def test_a_row_whose_prompt_and_judgment_are_too_long_is_left_out_and_named(capsys):
    from grlhfv_jax.stages import sft

    ex = [{"input_ids": [0] * 5}, {"input_ids": [0] * 9}, {"input_ids": [0] * 8}]
    recs = [{"id": "aa-0"}, {"id": "aa-1"}, {"id": "aa-2"}]
    assert sft._fitting(ex, recs, 8, 3) == [ex[0], ex[2]]
    assert (
        "[sft] grm step 3: record 'aa-1' left out: prompt + judgment 9 tokens > sft.grm.max_len = 8"
        in capsys.readouterr().out
    )
    assert sft._fitting(ex[1:2], recs[1:2], 8, 4) == ex[1:2]  # none fits: kept, and encoding.batch refuses it
