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
