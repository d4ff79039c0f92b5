"""Tests of run state on disk: checkpoints survive kills and corruption, run dirs resume safely.

Covers star_jax.io: CheckpointManager, RunDir, MetricLogger and the JSON helpers.
"""
import dataclasses
import json
import os
import pathlib
import random
import signal
import struct
import subprocess
import sys
import textwrap
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from star_jax.io import (CheckpointError, CheckpointManager, CheckpointWarning, MetricLogger,
                         RunConfigMismatch, RunDir, RunDirError, RunStateWarning, config_hash,
                         to_jsonable, write_json_atomic)

REPO = pathlib.Path(__file__).resolve().parents[1]


def _state(step):
    """An evolution-like state whose every value depends on `step`."""
    key = jax.random.key_data(jax.random.fold_in(jax.random.key(0), step))
    arrays = {
        "population": {"genes": np.arange(24, dtype=np.int32).reshape(4, 6) + step,
                       "fitness": np.linspace(0, 1, 8, dtype=np.float32).reshape(4, 2) * step},
        "rng": key,
        "archive": {"objectives": np.full((3, 2), 0.5 * step, dtype=np.float64),
                    "valid": np.array([True, False, step % 2 == 0])},
        "generation": np.int32(step),
    }
    meta = {"generation": step, "best": np.float32(0.25), "genomes": ["1.1.1.1.1-9.1.1.1.1"],
            "shape": (4, 6)}
    return arrays, meta


def _assert_same_arrays(got, want):
    assert isinstance(got, dict) and sorted(got) == sorted(want)
    for k in want:
        if isinstance(want[k], dict):
            _assert_same_arrays(got[k], want[k])
        else:
            w = np.asarray(want[k])
            assert isinstance(got[k], np.ndarray), k
            assert got[k].dtype == w.dtype and got[k].shape == w.shape, k
            assert got[k].tobytes() == w.tobytes(), k


# ---------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip(tmp_path):
    mgr = CheckpointManager(tmp_path / "ck")
    arrays, meta = _state(7)
    arrays["odd"] = {"bf16": jnp.arange(3, dtype=jnp.bfloat16),
                     "empty": np.zeros((0, 5), np.float32), "nothing": {},
                     "dots.and/slashes": np.arange(2, dtype=np.uint8)}
    arrays["jax_f32"] = jnp.ones((2, 2), jnp.float32) * 3
    assert mgr.latest_step() is None and mgr.all_steps() == []
    path = mgr.save(7, arrays, meta)
    assert path.name == "7" and path.is_dir()
    got, got_meta, step = CheckpointManager(tmp_path / "ck").restore()
    assert step == 7
    _assert_same_arrays(got, arrays)
    assert got["rng"].dtype == np.uint32 and got["rng"].shape == (2,)
    key = jax.random.wrap_key_data(got["rng"])
    assert jnp.array_equal(jax.random.key_data(key), arrays["rng"])
    assert got_meta == {"generation": 7, "best": 0.25, "genomes": ["1.1.1.1.1-9.1.1.1.1"],
                        "shape": [4, 6]}
    assert type(got_meta["best"]) is float


def test_checkpoint_rejects_typed_keys_and_objects(tmp_path):
    mgr = CheckpointManager(tmp_path)
    with pytest.raises(TypeError, match="key_data"):
        mgr.save(0, {"rng": jax.random.key(0)}, {})
    with pytest.raises(TypeError, match="meta"):
        mgr.save(0, {"names": np.array(["a", "b"])}, {})
    assert mgr.all_steps() == []


def test_keep_prunes_oldest_and_save_replaces_newer(tmp_path):
    mgr = CheckpointManager(tmp_path, keep=2)
    for s in range(5):
        mgr.save(s, *_state(s))
    assert mgr.all_steps() == [3, 4] and mgr.latest_step() == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["3", "4"]
    # Resuming from 3 and saving 4 again replaces the old 4 (a discarded timeline).
    mgr.save(4, {"x": np.ones(1, np.float32)}, {"again": True})
    assert mgr.restore()[1] == {"again": True}
    with pytest.warns(CheckpointWarning) as record:
        mgr.save(2, *_state(2))
    assert sorted(str(w.message).split(" at ")[0] for w in record) == [
        "discarding checkpoint step 3", "discarding checkpoint step 4"]
    assert mgr.all_steps() == [2]
    keep_all = CheckpointManager(tmp_path / "all", keep=None)
    for s in range(4):
        keep_all.save(s, *_state(s))
    assert keep_all.all_steps() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="keep"):
        CheckpointManager(tmp_path, keep=0)


def _largest_file(path):
    return max((p for p in path.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _truncate_array_data(step_dir):
    f = _largest_file(step_dir / "arrays")
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _garble_meta(step_dir):
    (step_dir / "meta" / "metadata").write_bytes(b"\x00garbage{{")


def _tamper_meta_value(step_dir):
    f = step_dir / "meta" / "metadata"
    record = json.loads(f.read_text())
    record["meta"]["generation"] = 99  # valid JSON, but the checksum no longer matches
    f.write_text(json.dumps(record))


def _flip_array_bytes(step_dir):
    f = _largest_file(step_dir / "arrays")
    data = bytearray(f.read_bytes())
    for i in range(len(data) // 3, len(data) // 3 + 16):
        data[i] ^= 0xFF
    f.write_bytes(bytes(data))


def _remove_arrays(step_dir):
    import shutil

    shutil.rmtree(step_dir / "arrays")


@pytest.mark.parametrize("damage", [_truncate_array_data, _garble_meta, _tamper_meta_value,
                                    _flip_array_bytes, _remove_arrays])
def test_corrupt_latest_falls_back_with_warning(tmp_path, damage):
    mgr = CheckpointManager(tmp_path)
    for s in range(3):
        mgr.save(s, *_state(s))
    damage(tmp_path / "2")
    fresh = CheckpointManager(tmp_path)
    with pytest.warns(CheckpointWarning) as record:
        arrays, meta, step = fresh.restore()
    assert step == 1 and meta["generation"] == 1
    _assert_same_arrays(arrays, _state(1)[0])
    message = str(record[0].message)
    assert "step 2" in message and str(tmp_path / "2") in message
    if damage is _tamper_meta_value:  # orbax reads it fine; only the checksum can tell
        assert "checksum mismatch" in message
    with pytest.raises(CheckpointError, match="step 2"):
        fresh.restore(step=2)
    # The run goes on: saving step 2 again replaces the corrupt one.
    fresh.save(2, *_state(2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fresh.restore()[2] == 2


def test_all_corrupt_raises_checkpoint_error(tmp_path):
    mgr = CheckpointManager(tmp_path)
    for s in range(2):
        mgr.save(s, *_state(s))
    _garble_meta(tmp_path / "0")
    _truncate_array_data(tmp_path / "1")
    with pytest.warns(CheckpointWarning):
        with pytest.raises(CheckpointError, match="no readable checkpoint") as err:
            mgr.restore()
    assert "step 0" in str(err.value) and "step 1" in str(err.value)
    with pytest.raises(CheckpointError, match="no checkpoints"):
        CheckpointManager(tmp_path / "empty").restore()
    with pytest.raises(CheckpointError, match="no checkpoint for step 5"):
        mgr.restore(step=5)


def test_half_written_step_is_ignored_and_cleaned(tmp_path):
    with CheckpointManager(tmp_path) as killed:
        killed.save(0, *_state(0))
    # What a kill inside orbax's save leaves: a temporary directory, never the final name; and
    # what a kill inside a delete of earlier versions left.
    tmp = tmp_path / "1.orbax-checkpoint-tmp-1234"
    (tmp / "arrays").mkdir(parents=True)
    (tmp / "arrays" / "partial").write_bytes(b"\x01\x02")
    trash = tmp_path / "0.deleting-1-2"
    trash.mkdir()
    mgr = CheckpointManager(tmp_path)  # the next writer
    assert mgr.all_steps() == [0] and mgr.restore()[2] == 0
    assert tmp.exists() and trash.exists()  # reading never changes the directory
    mgr.save(1, *_state(1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0", "1"]


_SAVE_LOOP = textwrap.dedent("""
    import pathlib, sys, types
    # Load only star_jax.io, not the model stack star_jax/__init__ imports (faster start).
    pkg = types.ModuleType("star_jax")
    pkg.__path__ = [str(pathlib.Path("star_jax").resolve())]
    sys.modules["star_jax"] = pkg
    import numpy as np
    from star_jax.io import CheckpointManager
    mgr = CheckpointManager(sys.argv[1], keep=2)
    latest = mgr.latest_step()
    step = 0 if latest is None else latest + 1
    while True:
        arrays = {"big": np.full((256, 256), step, np.float32),
                  "small": {"key": np.array([step, 7], np.uint32)}}
        mgr.save(step, arrays, {"step": step, "note": "x" * 1000})
        print("saved", step, flush=True)
        step += 1
""")


def test_sigkill_during_saves_leaves_a_restorable_latest(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    rng = random.Random(0)
    previous = -1
    for _ in range(2):
        proc = subprocess.Popen([sys.executable, "-c", _SAVE_LOOP, str(tmp_path)], cwd=REPO,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        first = proc.stdout.readline().split()
        assert first[:1] == [b"saved"], first
        time.sleep(rng.uniform(0.1, 0.5))  # the loop spends nearly all its time inside save()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        reported = [int(line.split()[1]) for line in proc.stdout.read().splitlines()]
        last_saved = max([int(first[1])] + reported)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a kill must not even leave a corrupt latest
            arrays, meta, step = CheckpointManager(tmp_path, keep=2).restore()
        # Saves are synchronous: every step reported as saved is on disk.
        assert step >= last_saved > previous
        assert meta == {"step": step, "note": "x" * 1000}
        assert np.all(arrays["big"] == step) and arrays["small"]["key"].tolist() == [step, 7]
        previous = step


# ---------------------------------------------------------------- run directories


def test_rundir_init_resume_and_mismatch(tmp_path):
    config = {"seed": 0, "model": {"width": 64, "depth": 2}, "population": 16, "lr": 1e-3}
    run = RunDir(tmp_path / "run")
    assert run.init(config) is False
    for sub in ("checkpoints", "logs", "logs/tensorboard", "plots"):
        assert (run.path / sub).is_dir()
    assert json.loads(run.config_path.read_text()) == config
    assert RunDir(tmp_path / "run").init(dict(reversed(list(config.items())))) is True
    changed = {"seed": 1, "model": {"width": 128, "depth": 2}, "lr": 1e-3, "extra": True}
    with pytest.raises(RunConfigMismatch) as err:
        RunDir(tmp_path / "run").init(changed)
    text = str(err.value)
    assert "4 key(s) differ" in text
    assert "seed: old=0 new=1" in text and "model.width: old=64 new=128" in text
    assert "population: old=16 new=(missing)" in text and "extra: old=(missing) new=true" in text
    assert "model.depth" not in text and "lr" not in text
    assert "--run-dir" in text
    with pytest.raises(RunDirError, match="already holds a run"):
        RunDir(tmp_path / "run").init(config, resume=False)


def test_rundir_refuses_files_without_config(tmp_path):
    run = RunDir(tmp_path)
    run.append_evaluation({"genome": "a"})
    with pytest.raises(RunDirError, match="no config.json"):
        run.init({"seed": 0})


def test_evaluations_truncated_last_line_is_dropped(tmp_path):
    run = RunDir(tmp_path / "run")
    run.init({"seed": 0})
    records = [{"genome": f"g{i}", "objectives": np.array([0.5, i], np.float32), "gen": np.int64(i)}
               for i in range(3)]
    for r in records:
        run.append_evaluation(r)
    want = [{"genome": f"g{i}", "objectives": [0.5, float(i)], "gen": i} for i in range(3)]
    assert run.read_evaluations() == want
    with open(run.evaluations_path, "ab") as f:  # a kill in the middle of a write
        f.write(b'{"genome": "g3", "objec')
    with pytest.warns(RunStateWarning, match="truncated last line 4"):
        assert run.read_evaluations() == want
    resumed = RunDir(tmp_path / "run")
    with pytest.warns(RunStateWarning, match="truncated"):
        assert resumed.init({"seed": 0}) is True
    resumed.append_evaluation({"genome": "g3", "objectives": [0.1, 3.0], "gen": 3})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = resumed.read_evaluations()
    assert got == want + [{"genome": "g3", "objectives": [0.1, 3.0], "gen": 3}]
    assert resumed.filter_evaluations(lambda r: r["gen"] <= 1) == 2
    assert [r["gen"] for r in resumed.read_evaluations()] == [0, 1]


# ---------------------------------------------------------------- logs


def _read_tensorboard_scalars(directory):
    """(tag, step, value) from TFRecord event files, parsed without TensorFlow."""
    from tensorboardX.proto import event_pb2

    out = []
    for path in sorted(pathlib.Path(directory).glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for v in event.summary.value:
                out.append((v.tag, event.step, v.simple_value))
    return out


def test_metric_logger_jsonl_and_tensorboard(tmp_path):
    run = RunDir(tmp_path / "run")
    run.init({"seed": 0})
    with MetricLogger(run) as log:
        for step in range(3):
            log.log(step, {"hypervolume": np.float32(0.5 * step), "front": {"size": step + 1},
                           "best_genome": "1.1.1.1.1"})
    lines = [json.loads(x) for x in run.metrics_path.read_text().splitlines()]
    assert [x["step"] for x in lines] == [0, 1, 2]
    assert lines[2]["hypervolume"] == 1.0 and lines[2]["front"] == {"size": 3}
    scalars = _read_tensorboard_scalars(run.tensorboard_dir)
    assert ("hypervolume", 2, 1.0) in scalars and ("front/size", 1, 2.0) in scalars
    assert not any(tag == "best_genome" for tag, _, _ in scalars)
    # Resume from a checkpoint of step 1: step 2 is logged again, once.
    with open(run.metrics_path, "ab") as f:
        f.write(b'{"step": 3, "hyper')
    with pytest.warns(RunStateWarning, match="truncated"):
        log = MetricLogger(run, purge_step=2)
    log.log(2, {"hypervolume": 7.0})
    log.close()
    log.close()
    lines = [json.loads(x) for x in run.metrics_path.read_text().splitlines()]
    assert [(x["step"], x["hypervolume"]) for x in lines] == [(0, 0.0), (1, 0.5), (2, 7.0)]
    assert len(list(run.tensorboard_dir.glob("events.out.tfevents.*"))) == 2
    assert ("hypervolume", 2, 7.0) in _read_tensorboard_scalars(run.tensorboard_dir)


# ---------------------------------------------------------------- JSON helpers


@dataclasses.dataclass(frozen=True)
class _Cfg:
    width: int = 64
    shape: tuple = (2, 3)
    path: pathlib.Path = pathlib.Path("runs/a")


def test_to_jsonable_and_config_hash():
    value = {"f": np.float32(0.5), "i": np.int64(3), "b": np.bool_(True), "a": np.arange(3),
             "j": jnp.ones((2,), jnp.int32), "cfg": _Cfg(), 4: "int key"}
    assert to_jsonable(value) == {"f": 0.5, "i": 3, "b": True, "a": [0, 1, 2], "j": [1, 1],
                                  "cfg": {"width": 64, "shape": [2, 3], "path": "runs/a"},
                                  "4": "int key"}
    with pytest.raises(TypeError, match=r"value\['x'\]\[1\]: cannot convert object"):
        to_jsonable({"x": [1, object()]})
    with pytest.raises(TypeError, match="key_data"):
        to_jsonable({"k": jax.random.key(0)})
    a = {"seed": 0, "model": {"width": 64, "depth": 2}}
    b = {"model": {"depth": 2, "width": np.int64(64)}, "seed": 0}
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash({"seed": 0, "model": {"width": 64, "depth": 3}})
    # The canonical form is part of the run-dir format: its hash must never change.
    assert config_hash(a) == "932fbbec8237eade54dedc1ef320f7522b06b3ac3cfead29f10044b0ec0037ba"


def test_write_json_atomic_keeps_old_content_on_failure(tmp_path):
    path = tmp_path / "state.json"
    write_json_atomic(path, {"generation": np.int32(1)})
    assert json.loads(path.read_text()) == {"generation": 1}
    with pytest.raises(TypeError):
        write_json_atomic(path, {"generation": 2, "bad": object()})
    assert json.loads(path.read_text()) == {"generation": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


# --------------------------------------------------------------------------- one writer per run
_HOLD = """
import sys, time
from star_jax.io import RunDir
with RunDir(sys.argv[1]).lock():
    print("locked", flush=True)
    time.sleep(60)
"""


_ENV = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _lock_holder(path) -> subprocess.Popen:
    """Another process holding the run directory's lock (until killed)."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(path)], stdout=subprocess.PIPE, text=True,
                              env=_ENV)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_busy_run_directory_is_refused_before_the_task_is_built(tmp_path, monkeypatch):
    # the holder is named at once: no data is built (and no JAX program runs) for a run that cannot start
    from star_jax.evolve import EvolveConfig, evolve
    from star_jax.io import RunDirBusy

    holder = _lock_holder(tmp_path / "run")
    try:
        monkeypatch.setattr(EvolveConfig, "make_task", lambda self: pytest.fail("the task was built"))
        with pytest.raises(RunDirBusy, match="in use by"):
            evolve(EvolveConfig.quick(), tmp_path / "run", progress=False)
    finally:
        holder.kill()
        holder.wait()


def test_second_writer_is_refused_naming_the_holder(tmp_path):
    from star_jax.io import RunDirBusy

    holder = _lock_holder(tmp_path / "run")
    try:
        with pytest.raises(RunDirBusy, match=rf"in use by process {holder.pid} on host .* \(started "):
            with RunDir(tmp_path / "run").lock():
                pass
        # readers need no lock: the report of a run in progress still reads its records
        RunDir(tmp_path / "run").read_evaluations()
    finally:
        holder.kill()
        holder.wait()
    # kill -9 left the holder's lock file behind: the next writer takes it over, with a warning
    with pytest.warns(RuntimeWarning, match=rf"taking over the lock left by process {holder.pid}"):
        with RunDir(tmp_path / "run").lock():
            pass
    # a clean exit leaves nothing to take over
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with RunDir(tmp_path / "run").lock():
            pass


def test_two_evolutions_on_one_run_directory_do_not_both_write(tmp_path):
    holder = _lock_holder(tmp_path / "run")
    try:
        out = subprocess.run([sys.executable, "-m", "star_jax.cli", "evolve", "--run-dir", str(tmp_path / "run")],
                             capture_output=True, text=True, env=_ENV, timeout=120)
    finally:
        holder.kill()
        holder.wait()
    assert out.returncode == 2
    assert f"in use by process {holder.pid}" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "config.json").exists()


def test_damaged_config_is_named(tmp_path):
    run = RunDir(tmp_path / "run")
    run.init({"seed": 0})
    run.config_path.write_text("{seed: 0", encoding="utf-8")
    with pytest.raises(RunDirError, match=r"config\.json is damaged"):
        RunDir(tmp_path / "run").init({"seed": 0})


def test_rewrite_keeps_an_unreadable_middle_line_and_says_what_to_do(tmp_path):
    from star_jax.io.jsonutil import read_jsonl, rewrite_jsonl

    path = tmp_path / "evaluations.jsonl"
    path.write_text('{"generation": 0}\n{not json\n{"generation": 1}\n{"generation": 2}\n{"genera', encoding="utf-8")
    with pytest.warns(RunStateWarning, match=r"evaluations\.jsonl: skipped unreadable line 2 .*repair or delete it"):
        assert [r["generation"] for r in read_jsonl(path)] == [0, 1, 2]
    assert rewrite_jsonl(path, lambda r: r["generation"] < 2) == 1
    assert path.read_text(encoding="utf-8") == '{"generation": 0}\n{not json\n{"generation": 1}\n'


def test_a_file_is_not_a_run_directory(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("mine", encoding="utf-8")
    for use in (lambda r: r.init({"seed": 0}), lambda r: r.lock().__enter__()):
        with pytest.raises(RunDirError, match=r"notes\.txt is a file, not a run directory"):
            use(RunDir(path))
    assert path.read_text(encoding="utf-8") == "mine"
