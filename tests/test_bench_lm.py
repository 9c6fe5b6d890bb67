"""sim/bench_lm.py: the FLOP count behind the real-model benchmark's achieved GFLOP/s, against a
count written out by hand for a tiny shape, and the report's lines. (The timings themselves are
the benchmark's job, not the suite's.)"""
from sim import bench_lm
from sim.lm.config import LMConfig

TINY = LMConfig(family="llama", vocab=10, d_model=4, layers=1, heads=1, kv_heads=1, head_dim=4, ffn=8)


def test_step_flops_by_hand():
    """P=1 prompt of T=3 slots, G=2 responses of N=2 tokens. A dense token: 2 x (4x4 + 2 x 4x4 + 4x4 +
    3 x 4x8) = 320; attention over s slots: 4 x s x 4 = 16 s; the head: 2 x 4 x 10 = 80.
    Sampling: the prompt once (3 x (320 + 48)) and its head (80), then one decode step of 2 tokens
    over all 5 slots (2 x (320 + 80 + 80)) = 2144. A teacher-forced pass: the prompt once (1104) and
    4 response tokens (4 x 480) = 3024; full fine-tuning's forward+backward is 3 of those."""
    f = bench_lm.step_flops(TINY, P=1, G=2, T=3, N=2)
    assert f == {"sampling": 2144.0, "reference": 3024.0, "policy_forward_backward": 9072.0}
    # a rank-1 adapter on each of 7 matrices adds 2 x 7 x 1 x 2D = 112 per token; no weight gradients
    lora = bench_lm.step_flops(TINY, P=1, G=2, T=3, N=2, lora_rank=1)
    assert lora["reference"] == 3024.0 + 112 * (3 + 4)
    assert lora["policy_forward_backward"] == 2 * lora["reference"]
    # a position-split adapter runs both of its sets on every token: twice the adapters' FLOPs
    split = bench_lm.step_flops(TINY, P=1, G=2, T=3, N=2, lora_rank=1, lora_sets=2)
    assert split["reference"] == 3024.0 + 2 * 112 * (3 + 4)


def test_report_names_each_configuration_with_the_machines_matmul_speed():
    run = {"config": "lora", "seeds": 8, "step_seconds": 2.0, "samples_per_second": 256.0, "achieved_gflops": 50.0,
           "state_mb_per_run": 56.0, "peak_rss_mib": 6000.0, "estimated_peak_mib": 5900.0, "compile_seconds": 9.0}
    lines = bench_lm.report({"matmul_gflops": 100.0, "prompts": 16, "group": 4, "new_tokens": 32, "lora_rank": 16,
                             "repeats": 3, "runs": [run]})
    assert "matmul now 100 GFLOP/s" in lines[0]
    assert "LoRA r16 (remat), 8 seed(s): 2.00 s/step" in lines[1] and "(0.50x matmul)" in lines[1]
    assert "peak RSS 6000 MiB (estimated 5900)" in lines[1]
