"""The same `falcon-hf finetune` command on 2 CPU processes (gloo) under `accelerate launch` and `torchrun`."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DDP_CONFIG = REPO_ROOT / "examples" / "accelerate_ddp.yaml"
FSDP_CONFIG = REPO_ROOT / "examples" / "accelerate_fsdp.yaml"
LAUNCH_TIMEOUT_S = 600


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def accelerate_command(*options: str) -> list[str]:
    launcher = shutil.which("accelerate")
    if launcher is None:
        pytest.skip("the accelerate command is not installed")
    return [launcher, "launch", *options, "--main_process_port", str(free_port())]


def torchrun_command() -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())]


@pytest.fixture(scope="module")
def text_file(tmp_path_factory, shakespeare_text):
    path = tmp_path_factory.mktemp("data") / "shakespeare.txt"
    path.write_text(shakespeare_text[:30_000], encoding="utf-8")
    return path


def run_finetune(launcher: list[str], text_file: Path, base: Path, output: Path) -> subprocess.CompletedProcess:
    """Full fine-tuning for 8 steps on 2 processes, each process writing the checksum of its final weights."""
    command = [*launcher, "-m", "falcon_hf.cli", "finetune", str(text_file), str(output), "--base", str(base),
               "--recipe", "full", "--learning-rate", "3e-3", "--max-steps", "8", "--save-steps", "8",
               "--logging-steps", "1", "--block-size", "32", "--per-device-batch-size", "4", "--disable-tqdm",
               "--cache-dir", str(output.parent / "datasets_cache"), "--rank-checksums"]
    # One thread per process: the two processes share the machine's cores.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S, env=env,
                            cwd=output.parent)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result


def check_two_ranks_trained_together(output: Path) -> dict:
    """Both ranks ran in one 2-process job, ended with identical weights, and the loss fell."""
    checksums = [json.loads((output / "rank_checksums" / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    assert [c["rank"] for c in checksums] == [0, 1] and {c["world_size"] for c in checksums} == {2}
    assert checksums[0]["sha256"] == checksums[1]["sha256"]
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["global_step"] == 8
    losses = [entry["loss"] for entry in metrics["log_history"] if "loss" in entry]
    assert len(losses) == 8 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    assert metrics["eval_loss"] < metrics["eval_loss_before"]
    assert (output / "merged" / "model.safetensors").exists()
    return checksums[0]


def test_accelerate_launch_ddp_on_two_cpu_processes(text_file, tiny_hf_folder, tmp_path):
    # --multi_gpu only selects accelerate's torch.distributed launcher; with no GPU, Trainer's use_cpu picks gloo.
    launcher = accelerate_command("--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                                  "--mixed_precision", "no", "--dynamo_backend", "no")
    run_finetune(launcher, text_file, tiny_hf_folder, tmp_path / "run")
    assert check_two_ranks_trained_together(tmp_path / "run")["distributed_type"] == "DistributedType.MULTI_CPU"


@pytest.mark.slow
def test_torchrun_on_two_cpu_processes(text_file, tiny_hf_folder, tmp_path):
    run_finetune(torchrun_command(), text_file, tiny_hf_folder, tmp_path / "run")
    check_two_ranks_trained_together(tmp_path / "run")


@pytest.mark.slow
def test_shipped_ddp_config(text_file, tiny_hf_folder, tmp_path):
    run_finetune(accelerate_command("--config_file", str(DDP_CONFIG)), text_file, tiny_hf_folder, tmp_path / "run")
    check_two_ranks_trained_together(tmp_path / "run")


@pytest.mark.slow
def test_shipped_fsdp_config_runs_on_cpu_and_says_it_fell_back(text_file, tiny_hf_folder, tmp_path):
    """accelerate 1.15 enables FSDP only on GPUs: on CPU the FSDP config trains as DDP, and the recipe says so."""
    result = run_finetune(accelerate_command("--config_file", str(FSDP_CONFIG)), text_file, tiny_hf_folder,
                          tmp_path / "run")
    check_two_ranks_trained_together(tmp_path / "run")
    assert "FSDP was requested but accelerate runs" in result.stdout + result.stderr
