"""The benchmark's command line runs end to end on a tiny shape and prints every table (timings
themselves are not asserted: they belong to the benchmark's output, not to tests)."""
import pytest
import torch

from bench import bench_sn


def test_bench_prints_tables_with_every_layer_and_the_summary(capsys):
    threads = torch.get_num_threads()
    try:
        bench_sn.main(["--shapes", "2x4x3", "--repeats", "1", "--no-e2e", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "C kernels in use" in out
    for table in ("### train", "### eval", "### memory"):
        assert table in out
    for name in bench_sn.LAYERS:
        assert f"| {name} |" in out or f" {name} |" in out
    assert "| (2, 4, 3) |" in out
    assert "Summary (ours): train fwd+bwd median" in out


def test_bench_rejects_bad_shapes_and_threads():
    with pytest.raises(SystemExit):
        bench_sn.main(["--shapes", "2x4", "--no-e2e"])
    with pytest.raises(SystemExit):
        bench_sn.main(["--threads", "0", "--no-e2e"])
    with pytest.raises(SystemExit):  # (torch.compile's modes: default, reduce-overhead)
        bench_sn.main(["--compile", "--compile-mode", "max-speed", "--no-e2e"])


def test_resnet50_figure_runs_and_converts_every_norm(capsys):
    """The GPU-only ResNet-50 figure, on the CPU at a small size without its Triton variant."""
    ratios = bench_sn.bench_resnet50(torch.device("cpu"), repeats=1, batch=2, size=32,
                                     variants={"bn": None, "sn": "torch"})
    out = capsys.readouterr().out
    assert "| bn |" in out and "| sn |" in out and set(ratios) == {"sn"} and ratios["sn"] > 0


def test_eval_deploy_figure_compares_sn_sparse_sn_and_frozen(capsys):
    ratios = bench_sn.bench_eval_deploy(torch.device("cpu"), repeats=1, batch=2)
    out = capsys.readouterr().out
    assert set(ratios) == {"sn", "ssn one-hot", "ssn frozen", "ssn frozen, tied"}
    assert all(r > 0 for r in ratios.values())
    # tied choices: every SN layer of ResNet-20 (21 with the shortcuts') became a plain layer
    assert "| ssn frozen, tied |" in out and "21 of 21 layers plain" in out


def test_launch_cost_table_without_a_gpu():
    """bench.launch_cost times every launch of a training step on Triton's own path and through
    sn.triton_launch, with a stand-in driver (no GPU): one row per launch, each time positive."""
    pytest.importorskip("triton", reason="bench.launch_cost times Triton's launches (triton ships with torch)")
    import os

    if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("bench.launch_cost stands in for a GPU's driver: on a GPU machine bench.host_profile times the "
                    "real launches, and under TRITON_INTERPRET=1 nothing is compiled to launch")
    from bench import launch_cost

    rows = launch_cost.main(["--calls", "20"])
    assert [r[0] for r in rows] == ["row_moments_kernel", "pool_kernel", "mix_apply_kernel", "row_grad_sums_kernel",
                                    "mix_grad_kernel", "grad_rows_kernel"]
    assert all(own > 0 and direct > 0 and at > 0 for *_, own, direct, at in rows)


def test_triton_versions_compiles_every_launch_under_the_installed_triton(capsys):
    """bench.triton_versions, asked for the installed release only (no download) and no interpreter
    run: its row counts every distinct program of the path for sm_80 and sm_90, none failing or
    spilling (the same launches tests/test_sn_triton_compile.py holds to that)."""
    triton = pytest.importorskip("triton", reason="bench.triton_versions compiles Triton kernels")
    import os

    if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("bench.triton_versions stands in for a GPU's driver: it runs on machines without one, and not "
                    "under TRITON_INTERPRET=1, where nothing is compiled")
    from bench import triton_versions
    from sn import triton_kernels as K

    (version, result, interpreted, direct), = triton_versions.main([triton.__version__, "--no-interpreter"])
    assert version == result["triton"] == triton.__version__ and interpreted == direct == ""
    assert result["failures"] == 0 and result["errors"] == [] and result["spills"] == []
    kernels = {name.split()[0] for name in result["registers"]}
    assert kernels == {k.__name__ for k in K.KERNELS}
    assert {name.split()[1] for name in result["registers"]} == {"sm_80", "sm_90"}
    assert result["programs"] >= 2 * 7 * 3 and all(0 < r <= 255 for r in result["registers"].values())
    out = capsys.readouterr().out
    assert f"| {triton.__version__} | {result['programs']} | 0 |" in out


def test_launch_count_table_from_the_command_line():
    """bench.launches in a process of its own (it switches Triton's interpreter on): BN's three
    operations a training step, the PyTorch-operation path's ~90 and the Triton path's six
    launches plus the batch counter, as ratios to BN."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("triton", reason="bench.launches counts the Triton kernels' launches (triton ships with torch)")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-m", "bench.launches", "--detail"], cwd=Path(__file__).parent.parent,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {line.split(" | ")[0].strip("| "): line for line in done.stdout.splitlines() if line.startswith("| ")}
    assert rows["BatchNorm2d"] == "| BatchNorm2d | 3 (1.0x) | 1 (1.0x) |"
    assert rows["SN triton (ours)"] == "| SN triton (ours) | 7 (2.3x) | 3 (3.0x) |"
    torch_train = int(rows["SN torch ops (ours)"].split(" | ")[1].split()[0])
    assert torch_train > 50
    assert "triton:mix_grad_kernel" in done.stdout


def test_the_gpu_check_script_stops_clearly_without_a_gpu(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: this checks the script's refusal on machines without one, and "
                    "here it would run its full GPU checks")
    root = Path(__file__).parent.parent
    done = subprocess.run(["bash", str(root / "scripts" / "gpu_check.sh"), str(tmp_path / "out")],
                          env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1 and "no CUDA device" in done.stderr, done.stderr[-2000:]
    assert not (tmp_path / "out" / "tests.log").exists()  # (nothing else was run)
