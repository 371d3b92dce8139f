"""The config schemas: unknown keys and bad types fail naming the key, every shipped config is
known to the schema, defaults are filled from the schema only, and the command line fails fast."""

import dataclasses
import glob
import importlib.util
import os
import re
import subprocess
import sys

import pytest

from grlhfv_jax import config as C
from grlhfv_jax import config as config_schema
from grlhfv_jax import roles
from grlhfv_jax.config import REQUIRED, ConfigError, Key, sections
from grlhfv_jax.data import world as W

ROOT = os.path.join(os.path.dirname(__file__), "..")
CONFIG_FILES = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))


def load(path: str, arg: str = ""):
    spec = importlib.util.spec_from_file_location(f"cfg_{os.path.basename(path)[:-3]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def demo(arg: str = "smoke"):
    return load(os.path.join(ROOT, "configs", "demo.py"), arg)


def leaves(node, path=""):
    """Dotted names of every key under a schema section."""
    if isinstance(node, Key):
        return [path]
    return [name for key, spec in node.items() for name in leaves(spec, f"{path}.{key}" if path else key)]


@pytest.mark.parametrize(
    "path, near",
    [
        ("grm_rl.kl_coeff", "kl_coef"),
        ("sft.policy.batchsize", "batch_size"),
        ("sft.grm.vqa_fracton", "vqa_fraction"),
        ("model.grm.dtpye", "dtype"),
        ("data.label_nosie", "label_noise"),
        ("evaluate.sample", "samples"),
        ("stage", "stages"),
    ],
)
def test_misspelled_key_names_the_key_and_the_nearest_valid_one(path, near):
    config = demo()
    *parents, leaf = path.split(".")
    node = config
    for p in parents:
        node = node[p]
    node[leaf] = 1
    with pytest.raises(ConfigError) as e:
        config_schema.validate(config)
    msg = str(e.value)
    assert msg.startswith(f"config.{path}: unknown key; did you mean '{near}'?"), msg
    assert "\n" not in msg


def test_misspelled_key_in_nscale_policy():
    config = load(os.path.join(ROOT, "configs", "demo_nscale.py"), "smoke")
    config.nscale.policy.aggregater = "mean"
    with pytest.raises(
        ConfigError, match=r"^config\.nscale\.policy\.aggregater: unknown key; did you mean 'aggregator'"
    ):
        config_schema.validate(config)


@pytest.mark.parametrize(
    "path, value, want",
    [
        ("grm_rl.eval_rows", "64", "int"),
        ("grm_rl.clip_ratio_c", "0.1", r"float\?"),
        ("rm.init", 1, "str"),
        ("vision.log_every", True, "int"),  # a bool is not an int
        ("report.enabled", "no", "bool"),
        ("sft.grm", 3, "a section"),
    ],
)
def test_wrong_type_names_key_type_and_value(path, value, want):
    config = demo()
    *parents, leaf = path.split(".")
    node = config
    for p in parents:
        node = node[p]
    with config.unlocked():
        if leaf in node:
            del node[leaf]  # ConfigDict itself refuses a type change of a set key
        node[leaf] = value
    with pytest.raises(ConfigError, match=rf"^config\.{re.escape(path)} = {re.escape(repr(value))}: expected {want}"):
        config_schema.validate(config)


@pytest.mark.parametrize("path, arg", [(p, a) for p in CONFIG_FILES for a in ("", "smoke")])
def test_every_shipped_config_is_known_to_the_schema(path, arg):
    config = load(path, arg)
    C.check(config)
    config_schema.validate(config)


def test_validate_fills_defaults_from_the_schema_into_a_copy():
    config = demo()
    del config.rm["init"]
    full = config_schema.validate(config)
    assert "init" not in config.rm  # the config as given is unchanged (it is what run_state records)
    assert full.rm.init == sections.RM["init"].default == "sft_grm"
    for name in leaves(sections.GRM_RL):
        key = sections.GRM_RL[name]
        want = config.grm_rl[name] if name in config.grm_rl else key.default
        assert full.grm_rl[name] == (tuple(want) if isinstance(want, list) else want), name
    assert "rm" in full.model and "processor_dir" in full.image and full.image.processor_dir is None


def test_data_defaults_are_the_worlds():
    """The data section's optional keys go to WorldConfig: their defaults must be its defaults."""
    fields = {f.name: f.default for f in dataclasses.fields(W.WorldConfig)}
    checked = [
        name
        for name, key in sections.DATA.items()
        if name in fields and name != "sizes" and key.default is not REQUIRED
    ]  # sizes: overrides
    assert len(checked) == 5
    for name in checked:
        assert sections.DATA[name].default == fields[name], name


def test_stages_hold_no_default_literals():
    """Defaults live in the schema only: no `.get("<schema key>", default)` in the stages."""
    keys = {name.split(".")[-1] for name in leaves(sections.CONFIG)}
    found = []
    for path in glob.glob(os.path.join(ROOT, "grlhfv_jax", "stages", "*.py")):
        src = open(path, encoding="utf-8").read()
        found += [f"{os.path.basename(path)}: {k}" for k in re.findall(r"\.get\(\"(\w+)\"", src) if k in keys]
    assert found == []


def test_describe_lists_every_key_with_type_default_and_meaning():
    text = C.describe()
    names = leaves(sections.CONFIG)
    assert len(text.splitlines()) == len(names) + 1  # a header
    for name in names:
        assert re.search(rf"^{re.escape(name)} ", text, re.M), name
    lines = C.describe("grm_rl").splitlines()[1:]
    assert [ln.split()[0] for ln in lines] == [f"grm_rl.{k}" for k in sections.GRM_RL]
    kl = next(ln for ln in lines if ln.startswith("grm_rl.kl_coef "))
    assert kl.split()[1:3] == ["float", "required"] and "KL" in kl
    assert C.describe("grm_rl.eval_rows").splitlines()[1].split()[1:3] == ["int", "32"]
    with pytest.raises(ConfigError, match=r"config\.grm_rll: unknown key; did you mean 'grm_rl'"):
        C.describe("grm_rll")


def test_check_overrides():
    C.check_overrides(["--config", "x.py", "--config.grm_rl.kl_coef=0.1", "--config.model.policy.hf_config.a.b=1"])
    with pytest.raises(ConfigError, match=r"^config\.policy_rl\.aggregater: unknown key; did you mean 'aggregator'"):
        C.check_overrides(["--config.policy_rl.aggregater=mean"])
    with pytest.raises(ConfigError, match=r"config\.grm_rl\.kl_coef is a float key, not a section"):
        C.check_overrides(["--config.grm_rl.kl_coef.x=1"])


def cli(tmp_path, *args):
    workdir = str(tmp_path / "run")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    p = subprocess.run(
        [sys.executable, "-m", "grlhfv_jax.main", *args, "--workdir", workdir],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return p, workdir


@pytest.mark.parametrize(
    "override, want",
    [
        ("--config.grm_rl.kl_coeff=0.1", r"config\.grm_rl\.kl_coeff: unknown key; did you mean 'kl_coef'\?"),
        ("--config.grm_rll.kl_coef=0.1", r"config\.grm_rll: unknown key; did you mean 'grm_rl'\?"),
        ("--config.grm_rl.group_size=two", r"config\.grm_rl\.group_size = 'two': invalid literal for int"),
        ("--config.sft=3", r"config\.sft is a section, not a key"),
        # a key demo.py leaves at its default: applied, then refused by the stage's validator
        (
            "--config.grm_rl.kl_estimator=k9",
            r"config\.grm_rl\.kl_estimator = 'k9': must be one of 'abs', 'k1', .*"
            r"\(grlhfv_jax\.rl\.grpo\.KL_ESTIMATORS\)",
        ),
    ],
)
def test_cli_bad_key_is_one_line_and_fails_fast(tmp_path, override, want):
    p, workdir = cli(tmp_path, "--config", "configs/demo.py:smoke", override)
    assert p.returncode != 0
    assert "Traceback" not in p.stderr, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and re.search(want, lines[0]), p.stderr
    assert not os.path.exists(workdir)  # nothing written, nothing compiled


def test_cli_sets_keys_the_file_leaves_at_their_default_typed_by_the_schema():
    """`--config.grm_rl.clip_ratio_c=0.1` (not in configs/demo.py) and keys the file sets, parsed by
    main.parse_flags exactly as on the command line, end up in the config with the schema's types."""
    from absl import flags as absl_flags

    from grlhfv_jax import main as cli_main

    argv = [
        "main",
        "--config",
        os.path.join(ROOT, "configs", "demo.py") + ":smoke",
        "--config.grm_rl.clip_ratio_c=3",
        "--config.grm_rl.kl_estimator=k1",
        "--config.grm_rl.steps=7",
        "--config.grm_rl.position_debias=false",
        "--config.data.sft_grm_opinions=(('hedges', -1),)",
        "--config.model.grm.hf_config.text_config.num_hidden_layers=2",
        "--config.grm_rl.clip_eps_high=None",
    ]
    try:
        cli_main.parse_flags(argv)
        c = absl_flags.FLAGS.config
        assert c.grm_rl.clip_ratio_c == 3.0 and isinstance(c.grm_rl.clip_ratio_c, float)
        assert c.grm_rl.kl_estimator == "k1" and c.grm_rl.steps == 7 and c.grm_rl.position_debias is False
        assert tuple(c.data.sft_grm_opinions) == (("hedges", -1),)
        assert c.model.grm.hf_config["text_config"]["num_hidden_layers"] == 2
        assert c.grm_rl.clip_eps_high is None
        C.check(c)
    finally:
        absl_flags.FLAGS.unparse_flags()


def test_cli_typo_in_a_config_file_is_one_line(tmp_path):
    path = tmp_path / "typo.py"
    path.write_text(
        "import importlib.util, os\n"
        f"spec = importlib.util.spec_from_file_location('d', {os.path.join(ROOT, 'configs', 'demo.py')!r})\n"
        "demo = importlib.util.module_from_spec(spec); spec.loader.exec_module(demo)\n"
        "def get_config(arg=''):\n"
        "    c = demo.get_config('smoke'); c.policy_rl.kl_coeff = 0.1; return c\n"
    )
    p, workdir = cli(tmp_path, "--config", str(path))
    assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr
    assert re.search(r"config\.policy_rl\.kl_coeff: unknown key; did you mean 'kl_coef'\?", p.stderr)
    assert not os.path.exists(workdir)


def test_cli_describe(tmp_path):
    p, _ = cli(tmp_path, "--describe", "rm")
    assert p.returncode == 0, p.stderr
    assert [ln.split()[0] for ln in p.stdout.splitlines()[1:]] == [f"rm.{k}" for k in sections.RM]


@pytest.mark.parametrize(
    "key, value, want",
    [
        (
            "remat_policy",
            "some",
            r"config\.model\.grm\.remat_policy = 'some': must be one of 'dots', 'dots_all', 'nothing'",
        ),
        ("logits_chunk", -1, r"config\.model\.grm\.logits_chunk = -1: must be >= 0"),
        ("vision_chunk", -2, r"config\.model\.grm\.vision_chunk = -2: must be >= 0"),
    ],
)
def test_memory_choices_of_a_model_are_checked_naming_the_key(key, value, want):
    config = demo()
    config.model.grm[key] = value
    with pytest.raises(ConfigError, match=want):
        config_schema.validate(config)


def test_memory_choices_of_a_model_reach_the_model():
    """config.model.*.remat / remat_policy / logits_chunk / vision_chunk -> the models' runtime keywords
    -> VLConfig."""
    from flax import nnx

    from grlhfv_jax import models

    sys.path.insert(0, os.path.dirname(__file__))
    import tiny_models as tm

    rt = roles.runtime(
        C.typed_section(
            sections.MODEL, dict(hf_config={}, remat=True, remat_policy="dots", logits_chunk=4, vision_chunk=32)
        )
    )
    assert (rt["remat"], rt["remat_policy"], rt["logits_chunk"], rt["vision_chunk"]) == (True, "dots", 4, 32)
    cfg = nnx.eval_shape(lambda: models.from_config(tm.tiny_hf_config("qwen2_vl").to_dict(), **rt)).config
    assert (cfg.remat, cfg.remat_policy, cfg.logits_chunk, cfg.vision_chunk) == (True, "dots", 4, 32)
