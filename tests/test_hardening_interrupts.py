"""Interrupted work: `falcon-hf convert-keras` and `falcon-hf finetune` killed with SIGINT or SIGKILL at set points
leave every destination absent or complete, never half-written, and `finetune --resume` continues from the last
complete checkpoint (SECURITY.md).

Each run is a child process running `falcon_hf.cli.main`, forked from a multiprocessing forkserver that imported
torch, transformers and falcon_hf once (a fresh interpreter per kill would spend most of the suite importing). A hook
patched into the child writes a marker file at the chosen point and waits there; the test sees the marker and sends
the signal, so every kill lands at the same place on every run.

After SIGKILL, `.DST.tmp-*` (and, if killed while replacing an existing DST, `.DST.old-*`) folders may remain beside
DST: clearly named temporaries that later runs ignore (and warn about); they are checked to be exactly that.
"""

import json
import multiprocessing
import os
import runpy
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from falcon_hf import FalconHFForCausalLM
from falcon_hf.conversion import convert_keras_preset

pytestmark = pytest.mark.usefixtures("single_thread")

MARKER_TIMEOUT_S = 600  # a busy 2-core machine can take minutes to fork, import lazily and train a few steps
EXIT_TIMEOUT_S = 120  # after the signal: cleanup of a tiny run
CHILD = '''
import os, sys, time
from pathlib import Path

import torch

torch.set_num_threads(1)
HOOKS = Path(MARKS)


def pause(point):
    """Announce `point` and wait for the test's signal (once: cleanup code may pass the same point again)."""
    if (HOOKS / point).exists():
        return
    (HOOKS / point).write_text(str(os.getpid()))
    time.sleep(3600)


def pause_after(owner, name, point, calls=1, when=lambda *args, **kwargs: True):
    original, seen = getattr(owner, name), [0]

    def hooked(*args, **kwargs):
        result = original(*args, **kwargs)
        if when(*args, **kwargs):
            seen[0] += 1
            if seen[0] == calls:
                pause(point)
        return result

    setattr(owner, name, hooked)


def pause_before(owner, name, point, when=lambda *args, **kwargs: True):
    original = getattr(owner, name)

    def hooked(*args, **kwargs):
        if when(*args, **kwargs):
            pause(point)
        return original(*args, **kwargs)

    setattr(owner, name, hooked)


exec(HOOK)
from falcon_hf import cli

status = cli.main(ARGV)
pause("exited") if status == 0 else sys.exit(status)
'''


@pytest.fixture(scope="module")
def forkserver():
    """A multiprocessing context whose server process has imported everything a child needs."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "transformers", "falcon_hf.cli", "falcon_hf.conversion",
                                    "falcon_hf.recipes", "peft", "datasets"])
    return context


class Child:
    """One `falcon-hf` run in a forked child, with `HOOK` (Python source) patched in before it starts."""

    def __init__(self, context, work: Path, argv: list, hook: str):
        self.marks = work / f"marks-{time.monotonic_ns()}"
        self.marks.mkdir(parents=True)
        script = self.marks / "child.py"
        script.write_text(CHILD)
        globals_ = {"MARKS": str(self.marks), "HOOK": hook, "ARGV": [str(arg) for arg in argv]}
        self.process = context.Process(target=runpy.run_path, args=(str(script),),
                                       kwargs={"init_globals": globals_, "run_name": "__main__"})
        self.process.start()

    def wait_for(self, point: str) -> None:
        deadline = time.monotonic() + MARKER_TIMEOUT_S
        while not (self.marks / point).exists():
            if not self.process.is_alive():
                raise AssertionError(f"the child ended with status {self.process.exitcode} before reaching "
                                     f"'{point}' (reached: {sorted(p.name for p in self.marks.iterdir())})")
            if time.monotonic() > deadline:
                self.process.kill()
                raise AssertionError(f"the child did not reach '{point}' within {MARKER_TIMEOUT_S} s")
            time.sleep(0.05)

    def kill_at(self, point: str, signum: int) -> int | None:
        """Wait for `point`, send `signum`, return the exit code."""
        self.wait_for(point)
        os.kill(self.process.pid, signum)
        self.process.join(EXIT_TIMEOUT_S)
        if self.process.is_alive():
            self.process.kill()
            raise AssertionError(f"the child was still running {EXIT_TIMEOUT_S} s after the signal")
        return self.process.exitcode


def leftovers(dst: Path) -> list[str]:
    return sorted(path.name for path in dst.parent.glob(f".{dst.name}.*"))


# --- convert-keras ------------------------------------------------------------------------------------------------


def assert_complete_hf_folder(folder: Path, reference: Path) -> None:
    """Every file of a finished conversion, weights equal to the reference conversion's, and it loads."""
    assert {path.name for path in folder.iterdir()} == {path.name for path in reference.iterdir()}
    ours, theirs = load_file(folder / "model.safetensors"), load_file(reference / "model.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[name], theirs[name]) for name in theirs)
    assert json.loads((folder / "config.json").read_text()) == json.loads((reference / "config.json").read_text())
    FalconHFForCausalLM.from_pretrained(folder)


CONVERT_HOOKS = {  # point: hook lines
    "weights": ["from falcon_hf.conversion import hf_checkpoint",
                'pause_after(hf_checkpoint.SafetensorsShardWriter, "write", "weights", calls=5)'],
    "files": ["from falcon_hf.conversion import keras_to_hf",
              'pause_before(keras_to_hf, "_write_hf_files", "files")'],
    "card": ['pause_after(Path, "write_text", "card", when=lambda path, *a, **k: path.name == "README.md")'],
    "exited": [],
}


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
@pytest.mark.parametrize("point", ["weights", "files", "card", "exited"])
def test_killed_conversion_leaves_dst_absent_or_complete(forkserver, tiny_keras_preset, tiny_hf_folder, tmp_path,
                                                         point, signum):
    dst = tmp_path / "out" / "hf"
    child = Child(forkserver, tmp_path, ["convert-keras", tiny_keras_preset, dst], "\n".join(CONVERT_HOOKS[point]))
    status = child.kill_at(point, signum)
    if point == "exited":  # the conversion had finished: killing the process changes nothing
        assert_complete_hf_folder(dst, tiny_hf_folder)
        assert leftovers(dst) == []
        return
    assert not dst.exists(), f"killed at '{point}', DST exists half-written"
    if signum == signal.SIGINT:
        assert status == 1  # KeyboardInterrupt, after the cleanup ran
        assert not (tmp_path / "out").exists(), "SIGINT left something behind"
        return
    (temporary,) = leftovers(dst)  # SIGKILL: no cleanup can run; exactly one clearly named temporary
    assert temporary.startswith(".hf.tmp-")
    convert_keras_preset(tiny_keras_preset, dst)  # the next run ignores it
    assert_complete_hf_folder(dst, tiny_hf_folder)


REPLACE_HOOK = '''
import os

original_replace = os.replace


def replace(source, target):
    original_replace(source, target)
    if Path(source).name == Path(ARGV[2]).name:  # DST has just been moved aside, the new one not yet in place
        pause("replace")


os.replace = replace
'''


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_killed_force_replacement_never_loses_the_old_dst(forkserver, tiny_keras_preset, tiny_hf_folder, tmp_path,
                                                          signum):
    """`--force` over an existing DST moves the old folder aside, then the new one in. Interrupted between the two
    renames (SIGINT), the old DST is put back; killed there (SIGKILL), DST is absent and the old folder waits, whole,
    in `.DST.old-*/DST`."""
    dst = tmp_path / "hf"
    shutil.copytree(tiny_hf_folder, dst)
    (dst / "mine.txt").write_text("the user's own file")
    child = Child(forkserver, tmp_path, ["convert-keras", tiny_keras_preset, dst, "--force"], REPLACE_HOOK)
    child.kill_at("replace", signum)
    if signum == signal.SIGINT:
        kept = dst
        assert leftovers(dst) == []
    else:
        assert not dst.exists()
        old, new = leftovers(dst)  # the old DST aside, and the finished new one still in its temporary
        assert old.startswith(".hf.old-") and new.startswith(".hf.tmp-")
        kept = dst.parent / old / dst.name
    assert (kept / "mine.txt").read_text() == "the user's own file"
    assert {path.name for path in kept.iterdir()} == {path.name for path in tiny_hf_folder.iterdir()} | {"mine.txt"}
    ours, theirs = load_file(kept / "model.safetensors"), load_file(tiny_hf_folder / "model.safetensors")
    assert all(torch.equal(ours[name], theirs[name]) for name in theirs)


def test_later_runs_warn_about_leftover_temporaries(tiny_keras_preset, tmp_path, caplog):
    dst = tmp_path / "hf"
    (tmp_path / ".hf.tmp-abc123").mkdir()
    convert_keras_preset(tiny_keras_preset, dst)
    assert (tmp_path / ".hf.tmp-abc123").is_dir()  # ignored, never deleted: another run may still be writing it
    assert ".hf.tmp-abc123" in caplog.text and "interrupted" in caplog.text


# --- finetune -----------------------------------------------------------------------------------------------------


FINETUNE_OPTIONS = ["--block-size", "32", "--per-device-batch-size", "4", "--max-steps", "6", "--save-steps", "2",
                    "--logging-steps", "1", "--learning-rate", "1e-2", "--disable-tqdm", "--seed", "0"]
FINETUNE_HOOKS = {  # point: (hook lines, the checkpoint resuming must start from)
    # SIGKILL once checkpoint-2 is complete: resuming continues from it.
    "checkpoint-2 saved": (["from transformers import Trainer",
                            'pause_after(Trainer, "_save_checkpoint", "checkpoint-2 saved")'], "checkpoint-2"),
    # SIGKILL inside the save of checkpoint-4 (model, optimizer and scheduler written; RNG and trainer state not):
    # resuming must skip the partial checkpoint-4 and continue from checkpoint-2.
    "inside checkpoint-4": (["from transformers import Trainer",
                             'pause_before(Trainer, "_save_rng_state", "inside checkpoint-4",',
                             '             when=lambda self, output_dir: output_dir.endswith("checkpoint-4"))'],
                            "checkpoint-2"),
    # SIGKILL while the final adapter is being written (weights written, adapter_config.json not yet): training was
    # over, so resuming loads checkpoint-6 and trains no further.
    "inside the adapter": (["from peft.config import PeftConfigMixin",
                            'pause_before(PeftConfigMixin, "save_pretrained", "inside the adapter",',
                            '             when=lambda self, folder, *a, **k: "checkpoint-" not in str(folder))'],
                           "checkpoint-6"),
    # SIGKILL while the merged model is being written.
    "inside merged": (["from falcon_hf import FalconHFForCausalLM",
                       'pause_before(FalconHFForCausalLM, "save_pretrained", "inside merged")'], "checkpoint-6"),
}


@pytest.fixture(scope="module")
def finetune_data(tmp_path_factory, shakespeare_text) -> Path:
    path = tmp_path_factory.mktemp("data") / "shakespeare.txt"
    path.write_text(shakespeare_text[:20_000], encoding="utf-8")
    return path


def assert_run_outputs_absent_or_complete(run: Path) -> None:
    """Each published entry of a run folder is absent or whole: adapter, merged model, metrics."""
    adapter, merged, metrics = run / "adapter", run / "merged", run / "metrics.json"
    if adapter.exists():
        assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in adapter.iterdir()}
        json.loads((adapter / "adapter_config.json").read_text())
        load_file(adapter / "adapter_model.safetensors")
    if merged.exists():
        FalconHFForCausalLM.from_pretrained(merged)
    if metrics.exists():
        json.loads(metrics.read_text())


def finetune_kill_and_resume(forkserver, tiny_hf_folder, finetune_data, tmp_path, point: str):
    from falcon_hf.recipes import finetune

    run = tmp_path / "run"
    cache = tmp_path / "cache"
    hook, resume_from = FINETUNE_HOOKS[point]
    argv = ["finetune", finetune_data, run, "--base", tiny_hf_folder, "--cache-dir", cache, *FINETUNE_OPTIONS]
    Child(forkserver, tmp_path, argv, "\n".join(hook)).kill_at(point, signal.SIGKILL)
    assert_run_outputs_absent_or_complete(run)
    result = finetune(finetune_data, run, base=tiny_hf_folder, cache_dir=cache, resume=True, block_size=32,
                      per_device_batch_size=4, max_steps=6, save_steps=2, logging_steps=1, learning_rate=1e-2,
                      disable_tqdm=True, seed=0)
    assert Path(result.metrics["resumed_from"]).name == resume_from
    assert result.metrics["global_step"] == 6
    assert_run_outputs_absent_or_complete(run)
    assert (run / "merged").is_dir() and (run / "adapter").is_dir()


@pytest.mark.parametrize("point", ["inside checkpoint-4", "inside the adapter"])
def test_killed_finetune_resumes_from_the_last_complete_checkpoint(forkserver, tiny_hf_folder, finetune_data,
                                                                   tmp_path, point):
    finetune_kill_and_resume(forkserver, tiny_hf_folder, finetune_data, tmp_path, point)


@pytest.mark.slow
@pytest.mark.parametrize("point", ["checkpoint-2 saved", "inside merged"])
def test_killed_finetune_resumes_at_more_points(forkserver, tiny_hf_folder, finetune_data, tmp_path, point):
    finetune_kill_and_resume(forkserver, tiny_hf_folder, finetune_data, tmp_path, point)
