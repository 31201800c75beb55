"""``python -m litespark.bench.profile_step`` on CPU: the timeline arithmetic behind its idle-time report."""

from __future__ import annotations

import json
import traceback

from litespark.bench import profile_step


def test_idle_gaps_are_stretches_with_no_kernel_on_any_stream():
    kernels = [
        (0, 10, "gemm"),
        (5, 20, "cast"),  # overlapping streams: busy until 20
        (25, 30, "norm"),
        (30, 31, "rope"),  # back to back: no gap between them
        (40, 50, "adam"),
        (41, 45, "copy"),
    ]  # a kernel inside another one's span
    assert profile_step.idle_gaps(kernels) == [(20, 5, "cast", "norm"), (31, 9, "rope", "adam")]
    assert profile_step.idle_gaps(list(reversed(kernels))) == profile_step.idle_gaps(kernels)
    assert profile_step.idle_gaps([]) == []


def test_gap_histogram_buckets_by_length():
    gaps = [(0, 3.0, "a", "b"), (0, 50.0, "a", "b"), (0, 60.0, "a", "b"), (0, 2500.0, "a", "b")]
    h = profile_step.gap_histogram(gaps)
    assert h["< 10 us"] == {"count": 1, "ms": 0.003}
    assert h["10-100 us"]["count"] == 2 and abs(h["10-100 us"]["ms"] - 0.11) < 1e-9
    assert h["0.1-1 ms"]["count"] == 0
    assert h[">= 1 ms"] == {"count": 1, "ms": 2.5}


def test_sync_site_names_the_innermost_frame_outside_torch():
    frames = [
        traceback.FrameSummary("/x/litespark/trainer.py", 120, "train_step"),
        traceback.FrameSummary("/venv/site-packages/deepspeed/runtime/utils.py", 233, "is_invalid_grad_norm"),
        traceback.FrameSummary("/venv/site-packages/torch/_tensor.py", 40, "wrapped"),
        traceback.FrameSummary("/usr/lib/python3.11/warnings.py", 10, "_showwarnmsg"),
    ]
    assert profile_step.sync_site(frames) == "deepspeed/runtime/utils.py:233 is_invalid_grad_norm"
    assert profile_step.sync_site(frames[2:]) == "?"


def test_host_call_timing_wraps_and_passes_through():
    class Engine:
        def step(self, x):
            return x + 1

    engine = Engine()
    times = profile_step.time_host_calls(engine, ("step",))
    assert engine.step(1) == 2 and engine.step(5) == 6
    assert len(times["step"]) == 2 and all(t >= 0 for t in times["step"])


def test_markdown_report_shows_idle_host_and_sync_sections():
    report = {
        "stack": "litespark",
        "micro_batch": 8,
        "gpu": "test GPU",
        "command": "python -m litespark.bench.profile_step",
        "description": "d",
        "step_wall_ms": 100.0,
        "gpu_busy_ms_per_step": 90.0,
        "gpu_busy_fraction": 0.9,
        "tokens_per_s": 1000.0,
        "tflops": 1.0,
        "kernel_launches_per_step": 12.0,
        "families_ms_per_step": {"gemm": 60.0, "attention": 30.0},
        "kernels_ms_per_step": {"nvjet_gemm": 60.0, "cudnn_fmha": 30.0},
        "idle_ms_per_step": 10.0,
        "idle_by_length": {"< 10 us": {"count": 3, "ms": 0.02}, ">= 1 ms": {"count": 1, "ms": 9.98}},
        "longest_idle": [{"at_ms": 50.0, "ms": 9.98, "after": "nvjet_gemm", "before": "cudnn_fmha"}],
        "host_ms_per_step": {"step": 42.0},
        "device_syncs_in_one_step": {"deepspeed/runtime/utils.py:233 f": 2},
    }
    md = profile_step.to_markdown(report)
    assert "| gemm | 60.0 | 66.7% |" in md
    assert "| `nvjet_gemm` | gemm | 60.00 |" in md
    assert "Idle GPU: 10.0 ms per step" in md
    assert "| 50.0 | 9.98 | `nvjet_gemm` | `cudnn_fmha` |" in md
    assert "| step | 42.0 |" in md
    assert "| `deepspeed/runtime/utils.py:233 f` | 2 |" in md
    report["device_syncs_in_one_step"] = {}
    assert profile_step.to_markdown(report).rstrip().endswith("none")


def test_families_do_not_take_norms_or_torch_elementwise_kernels_for_fp8_casts():
    f = profile_step.family
    assert (
        f("cast_transpose_optimized_kernel(__nv_bfloat16 const*, float const*, __nv_fp8_e5m2*)")
        == "fp8 cast/transpose/amax"
    )
    assert (
        f("void transformer_engine::normalization::rmsnorm_fwd_general_kernel<Kernel_traits<__nv_fp8_e4m3>>") == "norm"
    )
    assert (
        f(
            "void at::native::elementwise_kernel<128, 2, at::native::gpu_kernel_impl_nocast<at::native::"
            "BinaryFunctor<float, float, float, at::native::binary_internal::MulFunctor<float> > >"
        )
        == "elementwise/reduce"
    )
    assert (
        f(
            "void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda, "
            "at::native::memory::LoadWithCast<1>, at::native::memory::StoreWithCast<1> >"
        )
        == "copy/fill"
    )
    assert f("nvjet_sm90_qrtst_128x160_128x5_2x1_v_bz_coopA_algo2_TNT") == "gemm"
    for cudnn_norm in ("ln_tma_fwd_kernel", "ln_tma_bwd_kernel", "ln_bwd_finalize_kernel"):  # kernels.norm_kernel=cudnn
        assert f(cudnn_norm) == "norm", cudnn_norm


def _minimal_report() -> dict:
    return {
        "stack": "litespark",
        "micro_batch": 8,
        "gpu": "g",
        "command": "c",
        "description": "d",
        "step_wall_ms": 10.0,
        "gpu_busy_ms_per_step": 9.0,
        "gpu_busy_fraction": 0.9,
        "tokens_per_s": 1.0,
        "tflops": 1.0,
        "kernel_launches_per_step": 2.0,
        "families_ms_per_step": {"fp8 cast/transpose/amax": 9.0},
        "kernels_ms_per_step": {"rmsnorm_fwd_general_kernel<__nv_fp8_e4m3>": 4.0, "cast_transpose_kernel": 5.0},
        "idle_ms_per_step": 1.0,
        "idle_by_length": {},
        "longest_idle": [],
        "host_ms_per_step": {},
        "device_syncs_in_one_step": {},
    }


def test_rerender_resums_families_and_refuses_other_files(tmp_path):
    report = _minimal_report()
    path = tmp_path / "p.json"
    path.write_text(json.dumps(report))
    assert profile_step.main(["--out", str(tmp_path / "p"), "--rerender"]) == 0
    assert json.loads(path.read_text())["families_ms_per_step"] == {"fp8 cast/transpose/amax": 5.0, "norm": 4.0}
    assert "| norm | 4.0 |" in (tmp_path / "p.md").read_text()
    path.write_text("{}")
    assert profile_step.main(["--out", str(tmp_path / "p"), "--rerender"]) == 2


def test_launch_sites_name_the_op_its_callers_and_the_python_lines():
    from types import SimpleNamespace as NS

    def kernel(name, us):
        return NS(name=name, duration=us)

    step = NS(name="Optimizer.step#BF16_Optimizer.step", cpu_parent=None, kernels=[], stack=[])
    python_frame = NS(
        name="deepspeed/runtime/bf16_optimizer.py(526): _update_hp_grad",
        cpu_parent=step,
        kernels=[],
        stack=[],
        is_python_function=True,
    )
    to = NS(name="aten::to", cpu_parent=python_frame, kernels=[], stack=[])
    copy_in_step = NS(
        name="aten::copy_",
        cpu_parent=to,
        kernels=[kernel("copy_k", 3000.0), kernel("gemm_k", 5.0)],
        stack=[
            "<built-in method to of Tensor object at 0x7f>",
            "torch/_tensor.py(10): to",
            "/venv/lib/python3.11/site-packages/torch/nn/modules/module.py(1): _call_impl",
            "/venv/site-packages/deepspeed/runtime/bf16_optimizer.py(526): _update_hp_grad",
            "/venv/site-packages/deepspeed/runtime/bf16_optimizer.py(711): accumulate",
            "/x/litespark/trainer.py(117): train_step",
            "/x/bench/stacks.py(50): step",
        ],
    )
    copy_again = NS(name="aten::copy_", cpu_parent=to, kernels=[kernel("copy_k", 1000.0)], stack=copy_in_step.stack)
    copy_elsewhere = NS(name="aten::copy_", cpu_parent=None, kernels=[kernel("copy_k", 500.0)], stack=None)
    quiet = NS(name="aten::empty", cpu_parent=None, kernels=[], stack=[])
    sites = profile_step.launch_sites([copy_in_step, copy_again, copy_elsewhere, quiet], {"copy_k"}, frames=2)
    assert set(sites) == {"copy_k"}  # gemm_k was not asked for
    assert sites["copy_k"] == [
        {
            "site": "aten::copy_ < aten::to < Optimizer.step#BF16_Optimizer.step @ "
            "runtime/bf16_optimizer.py(526): _update_hp_grad < runtime/bf16_optimizer.py(711): accumulate",
            "ms": 4.0,
        },
        {"site": "aten::copy_", "ms": 0.5},
    ]
    # one site per module, not per layer
    layers = [
        NS(
            name="_Linear",
            cpu_parent=None,
            kernels=[kernel("cast_k", 100.0)],
            stack=["module/linear.py(1346): forward", f"nn.Module: TERowParallelLinear_{n}"],
        )
        for n in (3, 17)
    ]
    assert profile_step.launch_sites(layers, {"cast_k"}) == {
        "cast_k": [{"site": "_Linear @ module/linear.py(1346): forward < nn.Module: TERowParallelLinear", "ms": 0.2}]
    }
    # ancestors bound how far up the op chain a site goes
    short = profile_step.launch_sites([copy_in_step], {"copy_k"}, frames=0, ancestors=1)
    assert short["copy_k"][0]["site"] == "aten::copy_ < aten::to"


def test_costliest_outside_skips_gemm_and_attention():
    kernels = {
        "nvjet_sm90_qqtst_gemm": 100.0,
        "cudnn_generated_fort_native_sdpa_flash_bprop": 90.0,
        "cast_transpose_optimized_kernel": 20.0,
        "rmsnorm_fwd_general_kernel": 30.0,
        "tiny_fill": 0.1,
    }
    assert profile_step.costliest_outside(kernels, top=2) == [
        "rmsnorm_fwd_general_kernel",
        "cast_transpose_optimized_kernel",
    ]


def test_markdown_lists_launch_sites_when_recorded():
    report = json.loads(json.dumps(_minimal_report()))
    assert "Who launched" not in profile_step.to_markdown(report)
    report["launch_sites"] = {"copy_k": [{"site": "aten::copy_ < aten::to", "ms": 10.8}]}
    assert "| `copy_k` | 10.80 | `aten::copy_ < aten::to` |" in profile_step.to_markdown(report)


def test_per_layer_launch_sites_merge_into_one():
    sites = {
        "k": [
            {"site": "_Linear @ module/linear.py(1346): forward < nn.Module: TERowParallelLinear_15", "ms": 0.5},
            {"site": "_Linear @ module/linear.py(1346): forward < nn.Module: TERowParallelLinear_51", "ms": 0.25},
            {"site": "aten::mul_ @ runtime/utils.py(974): clip_tensors_by_global_norm", "ms": 0.5},
        ]
    }
    assert profile_step.merge_layer_sites(sites) == {
        "k": [
            {"site": "_Linear @ module/linear.py(1346): forward < nn.Module: TERowParallelLinear", "ms": 0.75},
            {"site": "aten::mul_ @ runtime/utils.py(974): clip_tensors_by_global_norm", "ms": 0.5},
        ]
    }
