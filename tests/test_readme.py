"""The README's Python examples run as written, so they cannot drift from the API.

Every fenced ```python block of README.md and experiments/README.md is executed, in order, in one
namespace per file (later blocks use names the earlier ones define), statement by statement:

- a statement followed by a comment line ``# SomeError: message`` must raise that exception with
  that message (the README shows the error a user gets);
- a ``print(...)`` statement followed directly by ``#`` comment lines must print exactly those
  lines (the README shows the output);
- a block whose first line is ``# readme-test: skip`` is not run (none is, today).

Training budgets are shrunk so the file runs in about a minute on 2 CPU cores: ``TrainConfig``
caps ``steps`` at a few, ``sj.tasks.make`` keeps 64 test sequences, ``sj.mad.score`` scores one MAD setting with one learning rate and
weight decay, and ``EvolveConfig.quick()`` is a 4-genome, 1-generation run. The shapes, task
settings and call signatures are the README's own. Runs are written under a temporary directory.
"""
from __future__ import annotations

import ast
import contextlib
import dataclasses
import io
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
FILES = ("README.md", "experiments/README.md")
SKIP = "# readme-test: skip"
_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
_RAISES = re.compile(r"^#\s*([A-Za-z_]\w*(?:Error|Exception)):\s*(.*)$")
MAX_STEPS = 3


def python_blocks(text: str) -> list[tuple[int, str]]:
    """The fenced python blocks of a markdown text, as (first line number, code)."""
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in _FENCE.finditer(text)]


def _comment_block(lines: list[str], start: int) -> list[str]:
    """The consecutive comment lines from index `start` (0-based) on, without their '# '."""
    out = []
    for line in lines[start:]:
        if not line.startswith("#"):
            break
        out.append(line[2:] if line.startswith("# ") else line[1:])
    return out


def _is_print(stmt: ast.stmt) -> bool:
    return (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)
            and isinstance(stmt.value.func, ast.Name) and stmt.value.func.id == "print")


def run_block(code: str, namespace: dict, where: str) -> None:
    """Executes one block statement by statement, checking the errors and outputs it shows."""
    lines = code.splitlines()
    tree = ast.parse(code, filename=where)
    for stmt in tree.body:
        src = ast.get_source_segment(code, stmt)
        label = f"{where}:{stmt.lineno}: {src.splitlines()[0]}"
        after = _comment_block(lines, stmt.end_lineno)
        expected_raise = _RAISES.match(lines[stmt.end_lineno]) if stmt.end_lineno < len(lines) else None
        compiled = compile(ast.Module(body=[stmt], type_ignores=[]), where, "exec")
        if expected_raise:
            name, message = expected_raise.groups()
            with pytest.raises(Exception) as info:
                exec(compiled, namespace)
            assert type(info.value).__name__ == name, f"{label}: raised {info.type.__name__}, README says {name}"
            assert str(info.value) == message, f"{label}: message differs from the README's"
            continue
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            try:
                exec(compiled, namespace)
            except Exception as e:  # name the README line in the failure
                raise AssertionError(f"{label}: {type(e).__name__}: {e}") from e
        if _is_print(stmt) and after:
            assert out.getvalue().rstrip("\n").splitlines() == after, f"{label}: output differs from the README's"


@pytest.fixture
def small_budgets(monkeypatch, tmp_path):
    """Shrinks training in the README's calls without changing their signatures; runs in tmp_path."""
    import star_jax as sj
    from star_jax.evolve import EvolveConfig

    real_train_config = sj.TrainConfig

    def train_config(*args, **kwargs):
        cfg = real_train_config(*args, **kwargs)
        steps = min(cfg.steps, MAX_STEPS)
        return dataclasses.replace(cfg, steps=steps, warmup_steps=min(cfg.warmup_steps, steps - 1),
                                   eval_batch_size=min(cfg.eval_batch_size, 64))

    real_score = sj.mad.score

    def score(genome, model_cfg=None, **kwargs):
        kwargs.update(settings=sj.tasks.mad_settings()[:1], lrs=(1e-3,), weight_decays=(0.0,),
                      steps=MAX_STEPS, eval_batch_size=32)
        return real_score(genome, model_cfg, **kwargs)

    real_quick = EvolveConfig.quick.__func__

    def quick(cls, **changes):
        config = real_quick(cls, **changes)
        return config.replace(
            pop_size=4, elitism=2, generations=1,
            task={**config.task, "num_train": 256, "num_test": 32},
            train={**config.train.to_dict(), "steps": MAX_STEPS, "warmup_steps": 1, "eval_batch_size": 32})

    real_make = sj.tasks.make

    def make_task(name, config=None, **fields):
        task = real_make(name, config, **fields)
        if config is None and "num_test" not in fields and getattr(task, "num_test", 0) > 64:
            task = real_make(name, num_test=64, **fields)  # evaluation on 64 test sequences
        return task

    monkeypatch.setattr(sj, "TrainConfig", train_config)
    monkeypatch.setattr(sj.tasks, "make", make_task)
    monkeypatch.setattr(sj.mad, "score", score)
    monkeypatch.setattr(EvolveConfig, "quick", classmethod(quick))
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("name", FILES)
def test_readme_python_blocks_run(name, small_budgets):
    text = (ROOT / name).read_text(encoding="utf-8")
    blocks = python_blocks(text)
    if name == "README.md":
        assert len(blocks) >= 6, "README.md lost its Python examples (or the fence pattern no longer matches)"
    elif not blocks:
        pytest.skip(f"{name} has no python blocks")
    namespace: dict = {"__name__": "__readme__"}
    for line, code in blocks:
        if code.startswith(SKIP):
            continue
        run_block(code, namespace, f"{name}:{line}")


def test_block_runner_checks_errors_and_outputs():
    """The checks above can fail: a wrong printed line, a wrong error message, a missing error."""
    ns: dict = {}
    run_block('print("a")\n# a\nx = 1\n', ns, "ok")
    with pytest.raises(AssertionError, match="output differs"):
        run_block('print("a")\n# b\n', {}, "wrong output")
    with pytest.raises(AssertionError, match="message differs"):
        run_block('int("x")\n# ValueError: another message\n', {}, "wrong message")
    with pytest.raises(pytest.fail.Exception):
        run_block('int("1")\n# ValueError: no error raised\n', {}, "no error")
    with pytest.raises(AssertionError, match=r"wrong call:1: undefined_name\(\)"):
        run_block("undefined_name()\n", {}, "wrong call")
