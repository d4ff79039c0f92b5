"""Tests of the checkpoint layer over orbax (checksum, fallback, earlier layout) and of the one
atomic-write helper every rewrite of run state goes through."""
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import orbax.checkpoint as ocp
import pytest

from star_jax.io import CheckpointError, CheckpointManager, CheckpointWarning
from star_jax.io.atomic import atomic_write_bytes, atomic_write_text
from star_jax.io.checkpoint import FORMAT_VERSION, _digest, _flatten

REPO = pathlib.Path(__file__).resolve().parents[1]


def _state(step):
    return ({"pop": {"genes": np.arange(12, dtype=np.int32).reshape(3, 4) + step,
                     "f": np.full((3, 2), 0.5 * step)},
             "key": np.array([step, 7], np.uint32)},
            {"generation": step, "archive": [{"hash": f"h{step}"}]})


# ---------------------------------------------------------------- checksum and fallback


def test_a_truncated_latest_step_falls_back_to_the_newest_intact_one(tmp_path):
    mgr = CheckpointManager(tmp_path, keep=None)
    for s in range(4):
        mgr.save(s, *_state(s))
    meta_file = tmp_path / "3" / "meta" / "metadata"
    meta_file.write_bytes(meta_file.read_bytes()[:40])  # cut short, as by a full disk
    with pytest.warns(CheckpointWarning, match="step 3") as record:
        arrays, meta, step = CheckpointManager(tmp_path).restore()
    assert step == 2 and meta == _state(2)[1]
    assert arrays["pop"]["genes"].tolist() == _state(2)[0]["pop"]["genes"].tolist()
    assert str(tmp_path / "3" / "meta") in str(record[0].message)


def test_a_directory_of_only_corrupt_steps_is_a_clear_error_naming_steps_and_files(tmp_path):
    mgr = CheckpointManager(tmp_path)
    for s in range(2):
        mgr.save(s, *_state(s))
    (tmp_path / "0" / "meta" / "metadata").write_bytes(b"\x00not json")
    record = json.loads((tmp_path / "1" / "meta" / "metadata").read_text())
    record["meta"]["generation"] = 5  # readable, but not what was saved
    (tmp_path / "1" / "meta" / "metadata").write_text(json.dumps(record))
    with pytest.warns(CheckpointWarning):
        with pytest.raises(CheckpointError) as err:
            CheckpointManager(tmp_path).restore()
    text = str(err.value)
    assert "no readable checkpoint" in text and "another run directory" in text
    assert f"step 0 at {tmp_path / '0'}: cannot read metadata {tmp_path / '0' / 'meta'}" in text
    assert f"step 1 at {tmp_path / '1'}: checksum mismatch" in text
    assert str(tmp_path / "1" / "arrays") in text


@pytest.mark.parametrize("damage", ["arrays[0].path", "empty_dicts", "meta", "arrays[0].path=7"])
def test_metadata_missing_a_field_falls_back_with_a_warning_naming_it(tmp_path, damage):
    mgr = CheckpointManager(tmp_path)
    for s in range(2):
        mgr.save(s, *_state(s))
    meta_file = tmp_path / "1" / "meta" / "metadata"
    record = json.loads(meta_file.read_text())
    if damage == "arrays[0].path":
        del record["arrays"][0]["path"]
    elif damage == "arrays[0].path=7":
        record["arrays"][0]["path"] = 7  # not a list of keys
    else:
        del record[damage]
    meta_file.write_text(json.dumps(record))
    with pytest.warns(CheckpointWarning, match="step 1") as caught:
        arrays, meta, step = CheckpointManager(tmp_path).restore()
    assert step == 0 and meta == _state(0)[1]
    assert "malformed metadata" in str(caught[0].message)


def test_only_empty_arrays_round_trip(tmp_path):
    mgr = CheckpointManager(tmp_path)
    mgr.save(0, {"none": np.zeros((0, 3), np.float32), "d": {}}, {"m": 1})
    arrays, meta, step = CheckpointManager(tmp_path).restore()
    assert (step, meta, arrays["d"]) == (0, {"m": 1}, {})
    assert arrays["none"].shape == (0, 3) and arrays["none"].dtype == np.float32


def test_steps_written_by_orbax_low_level_checkpointer_still_restore_and_resume(tmp_path):
    """Earlier versions wrote each step with orbax's `Checkpointer` over a composite handler;
    the manager reads those steps as they are and goes on saving and pruning beside them."""
    writer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    for s in range(3):
        arrays, meta = _state(s)
        leaves, empties = _flatten(arrays)
        header = {"format": FORMAT_VERSION, "step": s,
                  "arrays": [{"path": list(p), "dtype": a.dtype.name, "shape": list(a.shape)}
                             for p, a in leaves],
                  "empty_dicts": [list(p) for p in empties], "meta": meta}
        record = dict(header, sha256=_digest(header, [a for _, a in leaves]))
        writer.save(tmp_path / str(s), args=ocp.args.Composite(
            meta=ocp.args.JsonSave(record),
            arrays=ocp.args.PyTreeSave({f"leaf_{i:05d}": a for i, (_, a) in enumerate(leaves)})))
    writer.close()
    mgr = CheckpointManager(tmp_path, keep=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        arrays, meta, step = mgr.restore()
    assert step == 2 and meta == _state(2)[1] and arrays["key"].tolist() == [2, 7]
    mgr.save(3, *_state(3))
    assert mgr.all_steps() == [2, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2", "3"]


# ---------------------------------------------------------------- atomic writes


def test_atomic_write_replaces_whole_and_follows_the_umask(tmp_path):
    path = tmp_path / "config.json"
    atomic_write_text(path, "first\n")
    atomic_write_bytes(path, b"second \xff\n")
    assert path.read_bytes() == b"second \xff\n"
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    text = b"ok \xff\n".decode("utf-8", "surrogateescape")
    atomic_write_text(path, text)  # undecodable bytes read with surrogateescape go back as they were
    assert path.read_bytes() == b"ok \xff\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
    with pytest.raises(FileNotFoundError):
        atomic_write_text(tmp_path / "missing" / "x.json", "{}")


@pytest.mark.parametrize("fail_at", ["fsync", "replace"])
def test_an_interrupted_atomic_write_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch,
                                                                               fail_at):
    path = tmp_path / "baselines.jsonl"
    path.write_bytes(b'{"old": 1}\n')

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, fail_at, interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(path, b'{"new": 2}\n' * 1000)
    monkeypatch.undo()
    assert path.read_bytes() == b'{"old": 1}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["baselines.jsonl"]


_WRITE_LOOP = textwrap.dedent("""
    import pathlib, sys, types
    pkg = types.ModuleType("star_jax")
    pkg.__path__ = [str(pathlib.Path("star_jax").resolve())]
    sys.modules["star_jax"] = pkg
    from star_jax.io.atomic import atomic_write_bytes
    path = pathlib.Path(sys.argv[1])
    n = 0
    while True:
        n += 1
        atomic_write_bytes(path, (b"%08d" % n) * 200_000)  # 1.6 MB, all one version
        print(n, flush=True)
""")


def test_sigkill_during_atomic_writes_leaves_one_complete_version(tmp_path):
    path = tmp_path / "state.bin"
    path.write_bytes(b"%08d" % 0 * 200_000)
    rng = random.Random(0)
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", _WRITE_LOOP, str(path)], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert proc.stdout.readline().strip().isdigit()
        time.sleep(rng.uniform(0.05, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        data = path.read_bytes()
        assert len(data) == 1_600_000 and data == data[:8] * 200_000
