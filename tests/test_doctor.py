"""`normtrain doctor`: the CPU subset at --quick sizes end to end, the all-reduce verdict
arithmetic against nccl-tests' definition, and a light start (no torch for --help or bad input)."""
import argparse
import json
import subprocess
import sys

import pytest

from normtrain import dist, doctor

from .conftest import ROOT


def test_doctor_cpu_subset(cli, tmp_path):
    out = tmp_path / "doctor.json"
    p = cli("doctor", "--device", "cpu", "--quick", "--out", out, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(out.read_text())
    items = {r["item"]: r for r in res["items"]}
    assert {"torch", "cuda", "dali", "gpus", "all-reduce", "step", "dali-decode"} <= set(items)
    assert items["cuda"]["verdict"] == items["gpus"]["verdict"] == "skipped"
    assert all(r["verdict"] in ("ok", "slow", "broken", "skipped") for r in res["items"])
    ar = items["all-reduce"]
    assert ar["verdict"] == "ok" and ar["data"]["backend"] == "gloo" and ar["data"]["processes"] == 2
    assert all(s["correct"] and s["busbw_gbps"] > 0 for s in ar["data"]["sizes"])
    # two processes: bus bandwidth = algorithm bandwidth * 2(n-1)/n = algbw
    assert all(abs(s["busbw_gbps"] - s["algbw_gbps"]) < 1e-9 for s in ar["data"]["sizes"])
    step = items["step"]
    assert step["verdict"] in ("ok", "slow")
    tv, bn = step["data"]["rows"][:2]
    assert tv["method"] == "torchvision" and bn["method"] == "bn"
    assert abs(bn["vs_torchvision"] - bn["images_per_s"] / tv["images_per_s"]) < 1e-9
    if items["dali"]["verdict"] == "ok":
        assert items["dali-decode"]["verdict"] == "ok" and items["dali-decode"]["data"]["images_per_s"] > 0
        from normtrain import threads  # DALI's threads from the CPUs this process may use, not os.cpu_count()
        assert items["dali-decode"]["data"]["cpus_available"] == threads.available()
    assert res["verdict"] in ("ok", "slow") and "normtrain doctor:" in p.stdout
    for name in items:
        assert name in p.stdout  # one line per item, skipped ones included


def fake_allreduce(busbw_gbps, correct=True):
    def run_local(fn, n, backend, sizes, iters, warmup, timeout_s):
        assert fn is dist.all_reduce_bandwidth and backend == "nccl" and n == 8
        return [[{"bytes": s, "seconds": 1.0, "algbw_gbps": busbw_gbps * n / (2 * (n - 1)),
                  "busbw_gbps": busbw_gbps, "correct": correct} for s in sizes]] * n
    return run_local


@pytest.mark.parametrize("busbw, verdict", [(100.0, "ok"), (5.0, "slow")])
def test_all_reduce_verdict_is_the_share_of_a_resnet50_step(monkeypatch, busbw, verdict, capsys):
    monkeypatch.setattr(dist, "run_local", fake_allreduce(busbw))
    d = doctor.Doctor(argparse.Namespace(quick=False, data=None, out="x", device="auto"))
    d.gpus = 8
    d.check_all_reduce()
    (row,) = d.items
    assert row["verdict"] == verdict
    # 25,557,032 fp32 gradients, all-reduced: each link carries 2(n-1)/n of them at busbw
    expect = 4 * 25_557_032 * 2 * 7 / 8 / (busbw * 1e9)
    assert abs(row["data"]["grad_allreduce_s"] - expect) < 1e-12
    assert abs(row["data"]["step_s_at_target"] - 256 / 2600) < 1e-12


def test_wrong_sums_are_broken(monkeypatch, capsys):
    monkeypatch.setattr(dist, "run_local", fake_allreduce(100.0, correct=False))
    d = doctor.Doctor(argparse.Namespace(quick=False, data=None, out="x", device="auto"))
    d.gpus = 8
    d.check_all_reduce()
    assert d.items[0]["verdict"] == "broken" and d.items[0]["fix"]


LIGHT = """
import sys
from normtrain import doctor
from normtrain.errors import UsageError
for argv in ({argvs}):
    try:
        doctor.main(argv)
    except SystemExit:
        pass
    except UsageError as e:
        print("ERR:", e)
assert "torch" not in sys.modules, "torch was imported"
print("light")
"""


def test_help_and_usage_errors_do_not_import_torch(tmp_path):
    argvs = repr((["--help"], ["--data", str(tmp_path / "missing")], ["--bogus"]))
    p = subprocess.run([sys.executable, "-c", LIGHT.format(argvs=argvs)], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert "light" in p.stdout and "normtrain doctor" in p.stdout
    assert p.stdout.count("ERR:") == 2 and "train/" in p.stdout


def test_bad_data_is_one_line_exit_2_nothing_written(cli, tmp_path):
    p = cli("doctor", "--data", tmp_path, "--out", tmp_path / "d.json")
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "train/" in p.stderr
    assert not (tmp_path / "d.json").exists()


def test_docker_entrypoint_keeps_stdout_for_normtrain(tmp_path):
    """NGC's banner (printed by its entrypoint on stdout) goes to stderr; normtrain's stdout stays clean."""
    import os
    ngc = tmp_path / "ngc.sh"
    ngc.write_text('#!/bin/bash\necho "== PyTorch == NGC banner"\necho "WARNING: The NVIDIA Driver was not detected."\n'
                   'exec "$@"\n')
    fake = tmp_path / "normtrain"
    fake.write_text('#!/bin/bash\necho "run,status"\necho "args:$*"\necho "progress" >&2\n')
    for f in (ngc, fake):
        f.chmod(0o755)
    p = subprocess.run([str(ROOT / "docker" / "entrypoint.sh"), "runs", "--csv", "a b"], capture_output=True,
                       text=True, timeout=60, env={**os.environ, "NGC_ENTRYPOINT": str(ngc), "NORMTRAIN": str(fake)})
    assert p.returncode == 0, p.stderr
    assert p.stdout == "run,status\nargs:runs --csv a b\n"
    assert "NGC banner" in p.stderr and "WARNING" in p.stderr and "progress" in p.stderr
    assert "/opt/normtrain/entrypoint.sh" in (ROOT / "Dockerfile").read_text()
