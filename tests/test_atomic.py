import json
import os

import pytest

from trainerd import atomic


def test_write_json_replaces_whole_file_and_leaves_no_temp(tmp_path):
    p = tmp_path / "x.json"
    atomic.write_json(p, {"a": 1})
    atomic.write_json(p, {"a": 2})
    assert json.loads(p.read_text()) == {"a": 2}
    assert os.listdir(tmp_path) == ["x.json"]


def test_failed_write_keeps_old_content(tmp_path):
    p = tmp_path / "x.json"
    atomic.write_json(p, {"a": 1})
    with pytest.raises(TypeError):
        atomic.write_bytes(p, object())  # type: ignore[arg-type]
    assert json.loads(p.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["x.json"]


def test_rename_refuses_to_overwrite(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(FileExistsError):
        atomic.rename(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "a").is_dir()


def test_manifest_detects_truncation_missing_and_bitflip(tmp_path):
    d = tmp_path / "ck"
    (d / "sub").mkdir(parents=True)
    (d / "w.bin").write_bytes(b"x" * 1000)
    (d / "sub" / "s.json").write_text("{}")
    man = atomic.write_manifest(d, {"step": 3})
    assert set(man["files"]) == {"w.bin", "sub/s.json"}
    assert atomic.verify_manifest(d)["step"] == 3

    (d / "w.bin").write_bytes(b"x" * 999)
    with pytest.raises(atomic.ManifestError, match="999 bytes"):
        atomic.verify_manifest(d)
    (d / "w.bin").write_bytes(b"y" * 1000)
    with pytest.raises(atomic.ManifestError, match="sha256"):
        atomic.verify_manifest(d)
    assert atomic.verify_manifest(d, check_hashes=False)  # sizes only: the fast check
    (d / "sub" / "s.json").unlink()
    with pytest.raises(atomic.ManifestError, match="missing"):
        atomic.verify_manifest(d)
    (d / atomic.MANIFEST).unlink()
    with pytest.raises(atomic.ManifestError, match="never finished"):
        atomic.verify_manifest(d)


def test_make_readable_opens_a_tree_to_other_users_whatever_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        root = tmp_path / "v"
        (root / "sub").mkdir(parents=True)
        for p in (root / "w.safetensors", root / "sub" / "x.json"):
            p.write_bytes(b"x")
            os.chmod(p, 0o600)
        os.symlink("w.safetensors", root / "link")
        atomic.make_readable(root)
    finally:
        os.umask(old)
    assert os.stat(root).st_mode & 0o777 == 0o755 and os.stat(root / "sub").st_mode & 0o777 == 0o755
    assert all(os.stat(p).st_mode & 0o777 == 0o644 for p in (root / "w.safetensors", root / "sub" / "x.json"))
