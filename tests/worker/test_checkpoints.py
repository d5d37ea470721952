"""Checkpoint selection without torch: complete or invisible, newest by number."""

import os

from trainerd import atomic
from trainerd.worker import checkpoints as ck


def make(job, step, meta=None, complete=True):
    tmp = job / "checkpoints" / ".staging" / f"checkpoint-{step}"
    tmp.mkdir(parents=True)
    (tmp / "adapter_model.safetensors").write_bytes(os.urandom(64))
    (tmp / "optimizer.pt").write_bytes(os.urandom(128))
    if not complete:  # killed before the manifest: never renamed into place
        return tmp
    return ck.commit(job, tmp, {"step": step, "model_version": "v0001", **(meta or {})})


def test_newest_valid_by_number_not_string(tmp_path):
    for s in (900, 1000, 95):
        make(tmp_path, s)
    best, man = ck.latest_valid(tmp_path)
    assert best.name == "step-001000" and man["step"] == 1000  # not step-900 by string sort


def test_corrupt_and_half_written_are_set_aside_never_loaded(tmp_path):
    make(tmp_path, 10)
    newest = make(tmp_path, 20)
    (newest / "optimizer.pt").write_bytes(b"truncated")
    make(tmp_path, 30, complete=False)
    best, _ = ck.latest_valid(tmp_path)
    assert best.name == "step-000010"
    names = os.listdir(tmp_path / "checkpoints")
    assert any(n.startswith("corrupt-step-000020-") for n in names)  # kept for inspection
    assert ".staging" not in names


def test_checkpoint_of_another_model_version_is_not_resumed(tmp_path):
    make(tmp_path, 10)
    best, _ = ck.latest_valid(tmp_path, {"model_version": "v0002"})
    assert best is None
    assert any(n.startswith("stale-step-000010-") for n in os.listdir(tmp_path / "checkpoints"))


def test_retention_keeps_the_last_k(tmp_path):
    for s in range(1, 6):
        make(tmp_path, s * 10)
        ck.prune(tmp_path, keep=2)
    assert [p.name for p in ck.committed(tmp_path)] == ["step-000050", "step-000040"]
    for p in ck.committed(tmp_path):
        atomic.verify_manifest(p)
    ck.clear(tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_a_kill_while_pruning_never_leaves_a_half_deleted_checkpoint(tmp_path):
    """Found by the random-kill campaign: rmtree deletes file by file, so a worker killed
    while pruning left step-N with files missing under its real name. Deletion now renames
    first; the leftover is swept on the next start."""
    import signal
    import subprocess
    import sys
    import textwrap

    for s in (10, 20, 30):
        make(tmp_path, s)
    victim = textwrap.dedent(f"""
        import os, signal, shutil
        from pathlib import Path
        from trainerd.worker import checkpoints as ck
        def dying_rmtree(path, ignore_errors=False):  # removes one file, then the kill lands
            os.unlink(sorted(Path(path).iterdir())[0])
            os.kill(os.getpid(), signal.SIGKILL)
        ck.shutil.rmtree = dying_rmtree
        ck.prune(Path({str(tmp_path)!r}), keep=2)
    """)
    p = subprocess.run([sys.executable, "-c", victim])
    assert p.returncode == -signal.SIGKILL
    for c in ck.committed(tmp_path):  # every checkpoint visible under its name is whole
        atomic.verify_manifest(c)
    assert [c.name for c in ck.committed(tmp_path)] == ["step-000030", "step-000020"]
    best, _ = ck.latest_valid(tmp_path)
    assert best.name == "step-000030"
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["step-000020", "step-000030"]  # swept
