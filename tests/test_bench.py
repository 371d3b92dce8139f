"""Benchmark scripts print JSON; here the vision one's figures at tiny sizes: per-frame attention
memory grows linearly with the number of images, dense attention quadratically."""

from grlhfv_jax import bench


def test_vision_memory_is_linear_in_images_per_frame_and_quadratic_dense(capsys):
    small, large = (
        bench.main(["vision", "--images", str(n), "--patches", "64", "--depth", "1", "--embed", "32", "--heads", "4"])
        for n in (8, 32)
    )
    assert capsys.readouterr().out.count("{") == 2  # one JSON object per call on stdout
    # 4x the images: per frame at most 4x the memory (+10%), dense at least 8x (the scores: 16x)
    assert large["per_frame_temp_bytes"] <= 4.4 * small["per_frame_temp_bytes"]
    assert large["dense_temp_bytes"] >= 8.0 * small["dense_temp_bytes"]
    assert large["temp_ratio_dense_over_per_frame"] > small["temp_ratio_dense_over_per_frame"] > 2


def test_vision_bench_backward_in_pieces_takes_less_memory(capsys):
    """`vision --backward --chunk`: a trained tower's forward + gradient, per frame, whole and in
    pieces of one image's queries; the pieces hold one image's scores, not all eight."""
    res = bench.main(
        [
            "vision",
            "--images",
            "8",
            "--patches",
            "64",
            "--depth",
            "1",
            "--embed",
            "32",
            "--heads",
            "4",
            "--backward",
            "--chunk",
            "64",
            "--skip-dense",
        ]
    )
    assert capsys.readouterr().out.count("{") == 1
    assert "dense_temp_bytes" not in res and res["backward"] and res["chunk"] == 64
    assert res["per_frame_chunked_temp_bytes"] < 0.5 * res["per_frame_temp_bytes"], res


def test_grpo_bench_shared_prompts_use_less_step_memory(capsys):
    res = bench.main(
        [
            "grpo",
            "--prompts",
            "2",
            "--group",
            "4",
            "--prompt-tokens",
            "24",
            "--new-tokens",
            "4",
            "--image-size",
            "28",
            "--vocab",
            "128",
            "--hidden",
            "32",
            "--intermediate",
            "64",
            "--layers",
            "1",
            "--heads",
            "2",
            "--kv-heads",
            "1",
            "--vision-layers",
            "1",
            "--vision-hidden",
            "32",
            "--vision-heads",
            "2",
            "--repeats",
            "1",
        ]
    )
    assert capsys.readouterr().out.count("{") == 1
    assert res["rows"] == 8 and res["prompt_tokens"] > 24
    for g in (1, 4):
        assert res[f"group{g}_s"] > 0 and res[f"group{g}_step_temp_bytes"] > 0
    # 4 rows per prompt of ~30 tokens + 4 response tokens: the shared run holds far fewer activations
    assert res["group4_step_temp_bytes"] < 0.7 * res["group1_step_temp_bytes"]


def test_train_bench_tiny_runs_and_logits_in_chunks_take_less_memory(capsys):
    """`bench train --tiny` runs a GRPO step and prints one JSON object; the LM head in chunks of 16
    columns (a 128-column window, vocabulary 16k) needs far less of XLA's temporary memory."""
    common = [
        "train",
        "--tiny",
        "--dtype",
        "float32",
        "--vocab",
        "16384",
        "--micro-batches",
        "1",
        "--tokens",
        "160",
        "--new-tokens",
        "128",
        "--repeats",
        "1",
    ]
    chunked = bench.main(common + ["--logits-chunk", "16", "--remat", "--remat-policy", "dots"])
    plain = bench.main(common + ["--memory-only"])
    assert capsys.readouterr().out.count("{") == 2
    assert chunked["step_s"] > 0 and chunked["tokens_per_s"] > 0 and chunked["compile_s"] > 0
    assert chunked["mfu"] is None and chunked["platform"] == "cpu"  # no peak FLOP/s known for a CPU
    assert chunked["params"] == plain["params"] > 0 and "step_s" not in plain
    # the float32 logits of 4 rows x 128 columns x 16384 (33.5 MB each) were the largest buffers
    assert chunked["temp_bytes"] < 0.6 * plain["temp_bytes"], (chunked["temp_bytes"], plain["temp_bytes"])


def test_judge_bench_tiny_shared_prefix_gives_the_separate_tokens(capsys):
    res = bench.main(["judge", "--tiny", "--ns", "3", "--dtype", "float32"])
    assert capsys.readouterr().out.strip().count("\n") == 0  # one JSON line (n3 nests an object)
    r = res["n3"]
    assert r["pairs"] == 2 * 3 * 2 and r["same_tokens"] and r["max_logprob_diff"] < 1e-4
    assert r["shared_s"] > 0 and r["separate_s"] > 0 and r["speedup"] == r["separate_s"] / r["shared_s"]
