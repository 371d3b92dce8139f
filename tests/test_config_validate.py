"""One config truth (issue 30): every key's constraint and each section's rules live in config/, a
config is validated once into a frozen typed config, and a bad key fails before anything runs."""

import os
import re
import subprocess
import sys

import pytest

from grlhfv_jax import config as C
from grlhfv_jax import main, stages
from grlhfv_jax.config import ConfigError, FrozenError, sections
from grlhfv_jax.trainers import steps

ROOT = os.path.join(os.path.dirname(__file__), "..")
sys.path.insert(0, os.path.join(ROOT, "configs"))
import demo  # noqa: E402


def smoke():
    return demo.get_config("smoke")


# ----------------------------------------------------------------------------- frozen and typed


def test_the_validated_config_is_frozen_and_typed():
    c = C.validate(smoke())
    assert isinstance(c, C.Frozen) and isinstance(c.grm_rl, C.Frozen)
    assert c.grm_rl.kl_coef == c["grm_rl"]["kl_coef"] and "grm_rl" in c and c.get("no_such", 3) == 3
    with pytest.raises(FrozenError, match=r"config\.grm_rl is frozen"):
        c.grm_rl.kl_coef = 0.5
    with pytest.raises(FrozenError):
        c["grm_rl"] = {}
    with pytest.raises(FrozenError):
        c.model.policy["dtype"] = "bfloat16"
    with pytest.raises(FrozenError):
        del c.rm.init
    assert isinstance(c.grm_rl.lr, float) and isinstance(c.rm.reg, float)  # float keys hold floats
    assert isinstance(c.stages, tuple) and isinstance(c.grm_rl.freeze, tuple)  # lists: tuples
    assert type(c.model.policy.hf_config) is dict  # an open map: a plain dict, a copy
    c.model.policy.hf_config["x"] = 1
    assert "x" not in C.validate(smoke()).model.policy.hf_config
    assert c.grm_rl.replace(kl_coef=0.5).kl_coef == 0.5 and c.grm_rl.kl_coef != 0.5
    assert C.validate(c) is c  # validated once: a Frozen config passes as it is
    with pytest.raises(AttributeError, match=r"config\.grm_rl has no key 'kl_coeff'"):
        _ = c.grm_rl.kl_coeff


def test_absent_keys_get_the_schemas_defaults_and_a_judge_section():
    c = smoke()
    assert "judge" not in c.policy_rl and "num_micro_batches" not in c.rm
    full = C.validate(c)
    assert full.rm.num_micro_batches == sections.RM["num_micro_batches"].default
    assert full.policy_rl.judge.kind == "grm" and full.policy_rl.judge.max_concurrency == 8
    assert "policy_rl" in c.stages and "nscale" not in full  # an absent stage section stays absent


# ----------------------------------------------------------------------------- errors naming the key


@pytest.mark.parametrize(
    "key, value, match",
    [
        # a constraint: a range, a choice, a registry
        ("grm_rl.group_size", 1, r"^config\.grm_rl\.group_size = 1: must be >= 2$"),
        ("grm_rl.clip_eps", 1.5, r"^config\.grm_rl\.clip_eps = 1\.5: must be in \(0, 1\)$"),
        ("dpo.loss_type", "hinge", r"^config\.dpo\.loss_type = 'hinge': must be one of 'sigmoid', 'ipo'$"),
        (
            "policy_rl.advantage_estimator",
            "gae",
            r"^config\.policy_rl\.advantage_estimator = 'gae': must be one of "
            r"'grpo', .*\(grlhfv_jax\.rl\.grpo\.ADVANTAGE_ESTIMATORS\)$",
        ),
        ("policy_rl.judge.timeout_s", 0, r"^config\.policy_rl\.judge\.timeout_s = 0\.0: must be > 0$"),
        ("mesh_shape", (1, 0, 1), r"^config\.mesh_shape = \(1, 0, 1\): must be 3 sizes >= 1"),
        # a rule between keys
        ("grm_rl.mini_batches", 3, r"^config\.grm_rl\.mini_batches = 3 must divide the prompts per step \(32\)$"),
        ("policy_rl.pairs", "random", r"^config\.policy_rl\.num_pairs must be >= 1 when pairs = 'random'$"),
        ("policy_rl.judge.kind", "http", r"^config\.policy_rl\.judge\.base_url is missing"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_full_key(key, value, match):
    c = smoke()
    *parents, leaf = key.split(".")
    node = c
    for p in parents:
        if p not in node:
            node[p] = {}
        node = node[p]
    node[leaf] = value
    with pytest.raises(ConfigError, match=match):
        C.validate(c)


def test_a_key_a_running_stage_needs_is_required_and_only_then():
    c = smoke()
    del c.policy_rl["kl_coef"]
    with pytest.raises(ConfigError, match=r"^config\.policy_rl\.kl_coef is missing: weight of the KL penalty"):
        C.validate(c)
    c.stages = ("data", "sft")  # policy_rl does not run: its section is checked, not required complete
    assert "kl_coef" not in C.validate(c).policy_rl
    c = smoke()
    for key in ("aggregator", "pairs", "judge_max_new_tokens"):  # needed with reward = 'grm' only
        del c.policy_rl_rm[key]
    assert C.validate(c).policy_rl_rm.reward == "rm"
    del c.policy_rl["aggregator"]
    with pytest.raises(ConfigError, match=r"^config\.policy_rl\.aggregator is missing: .*reward = 'grm'"):
        C.validate(c)


def test_each_nscale_run_is_a_valid_policy_rl_section():
    c = demo.get_config("smoke")
    c.stages = ("data", "nscale")
    c.nscale = dict(ns=[2, 3], rewards=["rm", "grm"], policy=dict(c.policy_rl.to_dict(), reward="rm"))
    C.validate(c)
    del c.nscale.policy["aggregator"]  # reward 'rm' as written; the 'grm' runs need it
    with pytest.raises(ConfigError, match=r"^config\.nscale\.policy\.aggregator is missing"):
        C.validate(c)
    c.nscale.rewards = ["rm"]
    c.nscale.ns = [2, 1]
    with pytest.raises(
        ConfigError,
        match=r"^config\.nscale\.ns = \(2, 1\): must be a non-empty list, each >= 2 "
        r"\(1 is not\)$",
    ):
        C.validate(c)


def test_describe_lists_each_keys_constraint():
    lines = {ln.split()[0]: ln for ln in C.describe("grm_rl").splitlines()[1:]}
    assert "[>= 2]" in lines["grm_rl.group_size"] and "[in (0, 1)]" in lines["grm_rl.clip_eps"]
    assert "[in grlhfv_jax.rl.grpo.KL_ESTIMATORS]" in lines["grm_rl.kl_estimator"]
    line = C.describe("policy_rl.aggregator").splitlines()[1]
    assert "[in grlhfv_jax.rl.grouped.AGGREGATORS] [when reward = 'grm']" in line


# ----------------------------------------------------------------------------- before anything runs


def test_run_validates_before_it_writes_or_runs_anything(tmp_path, monkeypatch):
    monkeypatch.setattr(stages, "run_stage", lambda *a: pytest.fail("a stage ran"))
    c = smoke()
    c.rm.steps = 0
    with pytest.raises(ConfigError, match=r"^config\.rm\.steps = 0: must be >= 1$"):
        main.run(c, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize(
    "override, want",
    [
        ("--config.rm.steps=0", r"config\.rm\.steps = 0: must be >= 1"),
        ("--config.dpo.loss_type=hinge", r"config\.dpo\.loss_type = 'hinge': must be one of 'sigmoid', 'ipo'"),
        (
            "--config.policy_rl.mini_batches=3",
            r"config\.policy_rl\.mini_batches = 3 must divide the prompts per step \(8\)",
        ),
    ],
)
def test_cli_fails_once_before_jax_starts(tmp_path, override, want):
    """The command line exits with one line naming the key; no workdir, and jax never made a backend
    (no device, no compilation): the check runs before `initialize_distributed`."""
    workdir = str(tmp_path / "run")
    probe = (
        "import sys, jax._src.xla_bridge as xb\n"
        "from grlhfv_jax import main\n"
        "from absl import app\n"
        "try:\n"
        "    app.run(main.main, flags_parser=main.parse_flags)\n"
        "finally:\n"
        "    print('backends:', len(xb._backends), file=sys.stderr)\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", probe, "--config", "configs/demo.py:smoke", override, "--workdir", workdir],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr
    assert len(lines) == 2 and "backends: 0" in lines, p.stderr
    assert re.search(rf"^config error: {want}$", next(ln for ln in lines if ln != "backends: 0")), p.stderr
    assert not os.path.exists(workdir)


# ----------------------------------------------------------------------------- overrides


def test_override_sets_a_key_of_a_section_the_file_leaves_out():
    c = smoke()
    assert "judge" not in c.policy_rl
    C.apply_overrides(
        c,
        [
            "--config.policy_rl.judge.kind=http",
            "--config.policy_rl.judge.base_url=http://h:8000",
            "--config.policy_rl.judge.model=grm",
            "--config.policy_rl.judge.max_retries=2",
        ],
    )
    judge = C.validate(c).policy_rl.judge
    assert (judge.kind, judge.base_url, judge.model, judge.max_retries) == ("http", "http://h:8000", "grm", 2)
    assert judge.timeout_s == sections.JUDGE["timeout_s"].default
    with pytest.raises(ConfigError, match=r"config\.model\.grm\.hf_config\.nope: not in the config file"):
        C.apply_overrides(c, ["--config.model.grm.hf_config.nope.x=1"])  # inside an open map: not made up


def test_the_main_module_has_no_parser_of_its_own():
    assert not hasattr(main, "_apply_overrides") and not hasattr(main, "_override_value")


# ----------------------------------------------------------------------------- the step settings


@pytest.mark.parametrize(
    "cls, section", [(steps.GRPOConfig, "grm_rl"), (steps.BTConfig, "rm"), (steps.DPOConfig, "dpo")]
)
def test_step_settings_carry_every_key_of_their_section(cls, section):
    """from_section reads each schema key the dataclass has; set to a non-default value, each arrives."""
    values = {
        "kl_coef": 0.7,
        "clip_eps": 0.3,
        "clip_eps_high": 0.4,
        "clip_ratio_c": 4.0,
        "entropy_coef": 0.01,
        "num_micro_batches": 2,
        "ref_num_micro_batches": 2,
        "advantage_estimator": "rloo",
        "kl_estimator": "k1",
        "loss_agg_mode": "seq-mean-token-sum",
        "policy_loss": "ppo_clip",
        "reg": 0.5,
        "beta": 0.3,
        "loss_type": "ipo",
        "label_smoothing": 0.1,
    }
    c = smoke()
    fields = {f.name for f in __import__("dataclasses").fields(cls)} & set(cls.SECTION)
    assert fields, cls
    for key in fields:
        c[section][key] = values[key]
    got = cls.from_section(C.validate(c)[section])
    assert {k: getattr(got, k) for k in fields} == {k: values[k] for k in fields}
    default = cls()  # the defaults a direct caller gets are the schema's, where it has one
    for key in fields:
        if cls.SECTION[key].default is not C.REQUIRED:
            assert getattr(default, key) == cls.SECTION[key].default, key


def test_stages_and_trainers_never_validate_or_default_a_section():
    """The stages and trainers read the config validate() returned: no schema dict of their own, no
    re-defaulting call; the one hand-built section is Codec.from_dirs's image dict (entry points)."""
    import glob

    banned = re.compile(r"\bsection\(|with_defaults|check_section|^SCHEMA\b|^def validate\(|POS_INT", re.M)
    found, typed = [], []
    for path in sorted(
        glob.glob(os.path.join(ROOT, "grlhfv_jax", "stages", "*.py"))
        + glob.glob(os.path.join(ROOT, "grlhfv_jax", "trainers", "*.py"))
        + [os.path.join(ROOT, "grlhfv_jax", name) for name in ("roles.py", "encoding.py")]
    ):
        src = open(path, encoding="utf-8").read()
        found += [f"{os.path.basename(path)}: {m.group(0)}" for m in banned.finditer(src)]
        typed += [os.path.basename(path)] * src.count("typed_section(")
    assert found == [], found
    assert typed == ["encoding.py"]
    assert banned.search("x = config_schema.section(spec, MODEL)") and banned.search("def validate(config):")


def test_a_config_read_back_for_its_models_is_checked_but_not_required_complete():
    """export.py reads a run's model entries: keys, types and ranges checked, defaults filled, no
    stage's required keys or rules."""
    c = C.validate({"stages": ["policy_rl"], "model": {"policy": {"hf_config": {"a": 1}}}}, complete=False)
    assert c.model.policy.dtype == "float32" and c.image.processor_dir is None and "policy_rl" not in c
    with pytest.raises(ConfigError, match=r"^config\.model\.policy\.logits_chunk = -1: must be >= 0$"):
        C.validate({"model": {"policy": {"hf_config": {}, "logits_chunk": -1}}}, complete=False)
    with pytest.raises(ConfigError, match=r"^config\.policy_rl is missing \(needed by the 'policy_rl' stage\)$"):
        C.validate({"seed": 0, "stages": ["policy_rl"], "model": {"policy": {"hf_config": {"a": 1}}}})
