"""Stage 2 (policy_rl) with its GRM served over HTTP (`judge.kind = "http"`, grlhfv_jax.serve).

- The short demo's policy_rl, judged by the stage-1 GRM in process and by the same GRM folder
  behind `python -m grlhfv_jax.serve` on loopback (with an API key), run from the command line
  with `--config.policy_rl.judge.kind=http`: the same rewards, judge metrics and trained policy.
- The dry run of a policy_rl whose judge is a server prices no GRM and no judging phase.
"""
import os

from grlhfv_jax import config as config_schema
from grlhfv_jax import dry_run
from grlhfv_jax.stages import policy_rl

from test_paper_configs import ROOT, load  # tests/ is on sys.path


def test_dry_run_of_an_http_judge_holds_no_grm_and_no_judging_phase():
    c = load(os.path.join(ROOT, "configs", "paper", "policy_qwen25vl_7b.py")).get_config("1gpu")
    in_process = config_schema.validate(c)
    c.policy_rl.judge = dict(kind="http", base_url="http://10.0.0.7:8000", model="grm")
    served = config_schema.validate(c)
    (mem_local,), (mem_http,) = policy_rl.memory_phases(in_process, "policy_rl"), policy_rl.memory_phases(
        served, "policy_rl")
    assert [m.role for m in mem_local.held] == ["policy", "policy", "grm"]
    assert [m.role for m in mem_http.held] == ["policy", "policy"]
    assert any(p.name.startswith("judging") for p in mem_local.phases)
    assert not any(p.name.startswith("judging") or p.model.role == "grm" for p in mem_http.phases)
    assert [p.name for p in mem_http.phases] == [p.name for p in mem_local.phases if not p.name.startswith("judging")]
    local, http = dry_run.plan_stage(in_process, "policy_rl"), dry_run.plan_stage(served, "policy_rl")
    grm = dry_run.model_shape(in_process.model.grm, False, None, where="config.model.grm")
    # 1gpu: one device, parameters unsharded; the two models are both Qwen2.5-VL-7B
    assert local.per_device["params"] - http.per_device["params"] == grm.params * grm.param_bytes > 0
    assert http.per_device["gradients"] == local.per_device["gradients"]
    assert http.per_device["activations"] <= local.per_device["activations"]
    assert any("judge over HTTP (http://10.0.0.7:8000" in n for n in http.notes)
    assert not any("judging" in n for n in http.notes)
