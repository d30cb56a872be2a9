"""Saves that cannot lose a checkpoint: serialized concurrent saves, loads that see the old or
the new checkpoint whole, deletion of only lowbit's own files, fault injection at every write
step (crash, full disk, read-only target, SIGKILL), and file modes."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import lowbit
from lowbit.errors import CheckpointError
from lowbit.model import checkpoint_files, checkpoint_lock
from lowbit.model.checkpoint import MANIFEST, load, read_checkpoint, save
from lowbit.model.prepare import calibrate, prepare

SRC = str(Path(lowbit.__file__).resolve().parents[1])
X = torch.randn(4, 16, generator=torch.Generator().manual_seed(7))


def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))


def _calibrated(seed: int) -> nn.Module:
    model = prepare(_mlp(seed), "w8a8-static")
    with calibrate(model):
        model(X)
    return model


def _output(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(X)


def _loaded_output(path: Path) -> torch.Tensor:
    return _output(load(path, _mlp(99)))


def _weights_files(path: Path) -> list[str]:
    return sorted(p.name for p in path.glob("weights-*.safetensors"))

# ---------------------------------------------------------------------------- serialization


def test_a_second_save_waits_for_the_first_and_the_last_one_wins_whole(tmp_path, monkeypatch):
    """Writer A is held just before its commit; writer B must wait for A's lock, not
    interleave (before the lock, B's clean-up deleted A's weights and A's manifest then
    named a missing file)."""
    a, b = _calibrated(1), _calibrated(2)
    at_commit, release = threading.Event(), threading.Event()
    real_durable = checkpoint_files.write_text_durable
    owner = {}

    def held(path, text):
        if threading.current_thread() is owner.get("a"):
            at_commit.set()
            assert release.wait(30)
        return real_durable(path, text)

    monkeypatch.setattr(checkpoint_files, "write_text_durable", held)
    errors = []

    def run(model):
        try:
            save(model, tmp_path)
        except Exception as exc:  # reported below
            errors.append(exc)

    thread_a = threading.Thread(target=run, args=(a,))
    owner["a"] = thread_a
    thread_b = threading.Thread(target=run, args=(b,))
    thread_a.start()
    assert at_commit.wait(30)
    thread_b.start()
    thread_b.join(0.5)
    b_waited = thread_b.is_alive()
    release.set()
    thread_a.join(30)
    thread_b.join(30)
    assert not errors
    assert b_waited, "the second save must wait for the first one's lock"
    assert torch.equal(_loaded_output(tmp_path), _output(b)), "the later save wins"
    assert len(_weights_files(tmp_path)) == 1


def test_a_load_racing_an_unlocked_save_reads_the_new_checkpoint_whole(tmp_path, monkeypatch):
    """Without the lock (a read-only copy, no fcntl), a save that commits between the load's
    manifest read and its weights read must not fail the load: it reads both again."""
    old, new = _calibrated(1), _calibrated(2)
    save(old, tmp_path)
    monkeypatch.setattr(checkpoint_lock, "shared", lambda directory: _null())
    real_read = checkpoint_files._read_manifest
    calls = []

    def read_then_save(directory):
        manifest = real_read(directory)
        if not calls:
            calls.append(1)
            monkeypatch.setattr(checkpoint_lock, "exclusive", lambda d: _null())
            save(new, tmp_path)  # commits and deletes the weights the manifest above names
        return manifest

    monkeypatch.setattr(checkpoint_files, "_read_manifest", read_then_save)
    manifest, _ = read_checkpoint(tmp_path)
    assert manifest["weights_file"] == _weights_files(tmp_path)[0]
    monkeypatch.undo()
    assert torch.equal(_loaded_output(tmp_path), _output(new))


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


_WORKER = r"""
import sys, torch
from torch import nn
import lowbit
from lowbit.model.prepare import calibrate, prepare
role, path, seed, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(1)
X = torch.randn(4, 16, generator=torch.Generator().manual_seed(7))
def mlp(s):
    torch.manual_seed(s)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
if role == "limited":  # a real write failure: files may not grow beyond `count` bytes
    import resource, signal
    from lowbit.errors import CheckpointError
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (count, count))
    model = prepare(mlp(seed), "w8a8-static")
    with calibrate(model):
        model(X)
    try:
        lowbit.save(model, path)
    except CheckpointError as exc:
        print("refused:", exc)
    else:
        print("saved")
elif role == "writer":
    model = prepare(mlp(seed), "w8a8-static")
    with calibrate(model):
        model(X)
    for _ in range(count):
        lowbit.save(model, path)
    print("ok")
else:
    outputs = set()
    for _ in range(count):
        with torch.no_grad():
            outputs.add(round(float(lowbit.load(path, mlp(99))(X).sum()), 4))
    print(" ".join(str(o) for o in sorted(outputs)))
"""


def _spawn(*args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", _WORKER, *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_processes_saving_and_one_loading_never_lose_the_checkpoint(tmp_path):
    """Bounded: two writers x 8 saves of different models and a reader x 20 loads. Every
    load succeeds with one of the two models, and the directory ends whole."""
    a, b = _calibrated(1), _calibrated(2)
    save(a, tmp_path)
    procs = [_spawn("writer", tmp_path, 1, 8), _spawn("writer", tmp_path, 2, 8),
             _spawn("reader", tmp_path, 0, 20)]
    results = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail("a worker did not finish in 240 s")
        assert proc.returncode == 0, err[-2000:]
        results.append(out.split())
    allowed = {round(float(_output(m).sum()), 4) for m in (a, b)}
    assert {float(v) for v in results[2]} <= allowed
    final = _loaded_output(tmp_path)
    assert torch.equal(final, _output(a)) or torch.equal(final, _output(b))
    assert len(_weights_files(tmp_path)) == 1
    assert not list(tmp_path.glob(".*.tmp"))

# ---------------------------------------------------------------------------- what a save deletes


def test_a_save_keeps_unrelated_files_and_removes_only_its_own(tmp_path):
    save(_calibrated(1), tmp_path)
    first = _weights_files(tmp_path)[0]
    (tmp_path / "weights-old.safetensors").write_bytes(b"the user's own file")
    save_file({"w": torch.ones(2)}, str(tmp_path / "weights-0123456789abcdef.safetensors"))
    (tmp_path / "notes.txt").write_text("keep me")
    (tmp_path / f".weights-{'a' * 32}.tmp").write_bytes(b"left by a killed save")
    (tmp_path / f".manifest-{'b' * 32}.tmp").write_text("{}")
    (tmp_path / ".weights-mine.tmp").write_text("not lowbit's name pattern")
    orphan = tmp_path / "weights-fedcba9876543210.safetensors"  # an interrupted lowbit save
    save_file({"w": torch.ones(2)}, str(orphan), metadata={"format": "lowbit-checkpoint"})

    save(_calibrated(2), tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert first not in names, "the previous save's weights are removed"
    assert not orphan.exists(), "an orphan carrying lowbit's tag is removed"
    assert {"weights-old.safetensors", "weights-0123456789abcdef.safetensors", "notes.txt",
            ".weights-mine.tmp"} <= names, "files lowbit did not write are kept"
    assert not list(tmp_path.glob(".weights-a*.tmp")) and not list(tmp_path.glob(".manifest-*"))
    assert torch.equal(_loaded_output(tmp_path), _output(_calibrated(2)))


def test_weights_and_manifest_get_the_same_mode_from_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        save(_calibrated(1), tmp_path)
    finally:
        os.umask(old)
    manifest = tmp_path / MANIFEST
    weights = tmp_path / _weights_files(tmp_path)[0]
    assert weights.stat().st_mode & 0o777 == manifest.stat().st_mode & 0o777 == 0o644

# ---------------------------------------------------------------------------- fault injection

STEPS = ["save_file", "chmod", "fsync", "replace-weights", "write_text_durable",
         "replace-manifest", "fsync_dir"]


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("error", [errno.EIO, errno.ENOSPC, errno.EACCES],
                         ids=["crash", "disk-full", "read-only"])
def test_a_failure_at_any_write_step_keeps_the_previous_checkpoint(tmp_path, monkeypatch, step,
                                                                   error):
    old, new = _calibrated(1), _calibrated(2)
    save(old, tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())

    def fail(*args, **kwargs):
        raise OSError(error, os.strerror(error))

    replaces = []
    real_replace = os.replace

    def replace(src, dst):
        replaces.append(dst)
        wanted = 1 if step == "replace-weights" else 2
        if len(replaces) == wanted:
            fail()
        return real_replace(src, dst)

    if step.startswith("replace"):
        monkeypatch.setattr(checkpoint_files.os, "replace", replace)
    elif step in ("chmod", "fsync"):
        monkeypatch.setattr(checkpoint_files.os, step, fail)
    else:
        monkeypatch.setattr(checkpoint_files, step, fail)
    with pytest.raises(CheckpointError, match=r"cannot save the checkpoint there \(.+\).*Fix:"):
        save(new, tmp_path)
    monkeypatch.undo()
    assert not list(tmp_path.glob(".*.tmp")), "temporary files are removed"
    assert set(before) <= {p.name for p in tmp_path.iterdir()}, "no earlier file was removed"
    assert torch.equal(_loaded_output(tmp_path), _output(old)), "the previous checkpoint loads"
    save(new, tmp_path)
    assert torch.equal(_loaded_output(tmp_path), _output(new))
    assert len(_weights_files(tmp_path)) == 1


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs RLIMIT_FSIZE (POSIX)")
def test_a_real_write_failure_file_size_limit_keeps_the_previous_checkpoint(tmp_path):
    """Not a patched write: the saving process may not write files beyond 1 KB (the kernel
    refuses with EFBIG, as a full disk refuses with ENOSPC)."""
    old = _calibrated(1)
    save(old, tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = _spawn("limited", tmp_path, 2, 1024)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-2000:]
    assert out.startswith("refused:") and "cannot save the checkpoint there" in out, out
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "nothing added or removed"
    assert torch.equal(_loaded_output(tmp_path), _output(old))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_saving_into_a_read_only_directory_is_one_clear_error(tmp_path):
    save(_calibrated(1), tmp_path / "ckpt")
    (tmp_path / "ckpt").chmod(0o555)
    try:
        with pytest.raises(CheckpointError, match="cannot save the checkpoint there"):
            save(_calibrated(2), tmp_path / "ckpt")
        assert torch.equal(_loaded_output(tmp_path / "ckpt"), _output(_calibrated(1)))
    finally:
        (tmp_path / "ckpt").chmod(0o755)


def test_an_unreadable_weights_file_is_one_clear_error(tmp_path, monkeypatch):
    save(_calibrated(1), tmp_path)
    real_open = open

    def guarded(file, *args, **kwargs):
        if str(file).endswith(".safetensors"):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", guarded)
    with pytest.raises(CheckpointError, match=r"weights-.*cannot be read \(Permission denied\)"
                                              r".*Fix: make the checkpoint readable"):
        read_checkpoint(tmp_path)


def test_sigkill_during_saves_never_loses_the_checkpoint_and_later_saves_clean_up(tmp_path):
    """Bounded: three kills, each after the killed process has committed at least one save,
    at staggered delays into its loop of saves."""
    first = _calibrated(1)
    save(first, tmp_path)
    allowed = [_output(first), _output(_calibrated(3))]
    for delay in (0.0, 0.05, 0.2):
        before = (tmp_path / MANIFEST).stat().st_mtime_ns
        proc = _spawn("writer", tmp_path, 3, 100000)
        deadline = time.monotonic() + 120
        while (tmp_path / MANIFEST).stat().st_mtime_ns == before and proc.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        loaded = _loaded_output(tmp_path)
        assert any(torch.equal(loaded, o) for o in allowed)
        save(first, tmp_path)  # the next save's commit resets the manifest's time
        time.sleep(0.01)
    save(first, tmp_path)
    assert not list(tmp_path.glob(".*.tmp")), "stale temporaries of killed saves are removed"
    assert len(_weights_files(tmp_path)) == 1

# ---------------------------------------------------------------------------- determinism, no pickle


def test_two_processes_saving_the_same_model_write_identical_bytes(tmp_path):
    procs = [_spawn("writer", tmp_path / name, 5, 1) for name in ("a", "b")]
    for proc in procs:
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-2000:]
    a, b = tmp_path / "a", tmp_path / "b"
    assert _weights_files(a) == _weights_files(b)
    name = _weights_files(a)[0]
    assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / MANIFEST).read_text() == (b / MANIFEST).read_text()


def test_loading_never_unpickles(tmp_path, monkeypatch):
    import pickle

    save(_calibrated(1), tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("lowbit.load must not unpickle")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)
    assert torch.equal(_loaded_output(tmp_path), _output(_calibrated(1)))
