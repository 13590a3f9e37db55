"""Started by srun (Slurm's variables, no torchrun's), normtrain is one worker of the step (issue 13 point 7)."""
import json
import os
import socket
import subprocess
import sys

import pytest

from normtrain import dist

from .conftest import ROOT


@pytest.mark.parametrize("spec,hosts", [
    ("node[01-04,07]", ["node01", "node02", "node03", "node04", "node07"]),
    ("gpu-a,gpu-b[1-2]", ["gpu-a", "gpu-b1", "gpu-b2"]),
    ("rack[1-2]-n[08-09]", ["rack1-n08", "rack1-n09", "rack2-n08", "rack2-n09"]),
    ("x[9-11]", ["x9", "x10", "x11"]),
    ("single", ["single"]),
])
def test_nodelist_expansion(spec, hosts, monkeypatch):
    monkeypatch.setenv("PATH", "")  # no scontrol: the parser's own expansion
    assert dist.expand_nodelist(spec) == hosts


SLURM = {"SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NODEID": "1", "SLURM_NTASKS": "8",
         "SLURM_STEP_NUM_TASKS": "8", "SLURM_STEP_TASKS_PER_NODE": "4(x2)", "SLURM_JOB_ID": "4242",
         "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_STEP_NODELIST": "gpu[07-08]"}


def test_slurm_variables_map_to_torchruns(monkeypatch):
    monkeypatch.setenv("PATH", "")
    assert dist.slurm_env(SLURM) == {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4",
                                     "MASTER_ADDR": "gpu07", "MASTER_PORT": str(10000 + 4242)}
    assert dist.slurm_env({**SLURM, "MASTER_PORT": "29999", "MASTER_ADDR": "head"})["MASTER_ADDR"] == "head"
    assert dist.slurm_env({**SLURM, "MASTER_PORT": "29999"})["MASTER_PORT"] == "29999"
    # The batch script itself (no srun step), a one-task step, and torchrun's workers are not Slurm workers.
    assert dist.slurm_env({k: v for k, v in SLURM.items() if k != "SLURM_STEP_NUM_TASKS"}) is None
    assert dist.slurm_env({**SLURM, "SLURM_STEP_NUM_TASKS": "1"}) is None
    assert dist.slurm_env({**SLURM, "RANK": "0", "WORLD_SIZE": "2"}) is None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_srun_tasks_train_as_one_ddp_run(tmp_path):
    """Two processes with only Slurm's variables (what srun -n 2 gives them) form a world of 2 over gloo."""
    base = {k: v for k, v in os.environ.items()
            if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") and not k.startswith("SLURM")}
    common = {"SLURM_NTASKS": "2", "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_TASKS_PER_NODE": "2",
              "SLURM_NODEID": "0", "SLURM_JOB_ID": "77", "SLURM_STEP_NODELIST": "localhost,unused[1-3]",
              "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1", "PATH": os.path.dirname(sys.executable)}
    args = [sys.executable, "-m", "normtrain", "--norm", "none", "--set", "train.max_steps=3",
            "--set", "log.tensorboard=false", "--set", "run.device=cpu", "--out", str(tmp_path / "s")]
    procs = [subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**base, **common, "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r)})
             for r in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    res = json.loads((tmp_path / "s/results.json").read_text())
    assert res["world_size"] == 2 and res["steps"] == 3 and res["status"] == "completed"
    assert "normtrain: completed" in outs[0][0] and "normtrain: completed" not in outs[1][0]  # rank 0 alone prints


def test_launcher_flags_inside_a_multi_task_step_are_refused(tmp_path):
    env = {k: v for k, v in {**os.environ, **SLURM}.items() if k not in ("RANK", "WORLD_SIZE")}
    p = subprocess.run([sys.executable, "-m", "normtrain", "--nproc-per-node", "2", "--set", "run.device=cpu",
                        "--out", str(tmp_path / "o")], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 2 and "task 5 of 8 of an srun step" in p.stderr, p.stderr
    assert not (tmp_path / "o").exists()
