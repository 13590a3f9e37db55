"""tools/bench_layers.py at a smoke size: it runs, and its machine-independent counts say what
the fast paths promise (timings are the benchmark's business, not a test's)."""
import json
import subprocess
import sys

from .conftest import ROOT


def test_bench_layers_smoke(tmp_path):
    out = tmp_path / "layers.json"
    p = subprocess.run([sys.executable, "tools/bench_layers.py", "--device", "cpu", "--shape", "8,8,4,4",
                        "--ghost-groups", "2", "--groups", "4", "--repeats", "1", "--warmup", "0",
                        "--model", "mlp", "--size", "8", "--accum", "3", "--step-repeats", "1",
                        "--methods", "ws-gn", "--json", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    res = json.loads(out.read_text())
    rows = {(r["dtype"], r["layout"], r["variant"]): r for r in res["ghost"]}
    assert len(rows) == 2 * 2 * 5
    for dtype in ("fp32", "bf16"):
        for layout in ("contiguous", "channels_last"):
            fused, ref = rows[dtype, layout, "ghost-fused"], rows[dtype, layout, "ghost-reference"]
            assert fused["bytes_per_element"] < ref["bytes_per_element"], (dtype, layout)
            assert rows[dtype, layout, "bn"]["vs_bn"] == 1.0
    # bf16: the reference's fp32 copies make it move over 4x the fused path's bytes
    assert rows["bf16", "contiguous", "ghost-reference"]["bytes_per_element"] > \
        4 * rows["bf16", "contiguous", "ghost-fused"]["bytes_per_element"]
    (r,) = res["reparam"]
    # 3 micro-batches: the reparametrisation's ops run once instead of 3 times
    assert r["ops_once_per_step"] < r["ops_per_micro_batch"]
    assert "| ws-gn |" in p.stdout
