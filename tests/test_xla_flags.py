"""XLA's CPU code-generation options set at import (star_jax/xla_flags.py): when they are appended
to XLA_FLAGS, when they are left alone, and that a fresh process gets them."""
import json
import os
import subprocess
import sys

import pytest

from star_jax import xla_flags

OPTS = "--xla_backend_extra_options=" + ",".join(xla_flags.CPU_OPTIONS)


@pytest.fixture(autouse=True)
def _keep_status():
    before = xla_flags.STATUS
    yield
    xla_flags.STATUS = before


def test_applied_appends_to_the_users_flags():
    env = {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false"}
    assert xla_flags.apply_cpu_options(env, backends_started=False) == "applied"
    assert env["XLA_FLAGS"] == "--xla_cpu_multi_thread_eigen=false " + OPTS
    assert xla_flags.STATUS == "applied"
    env = {}
    assert xla_flags.apply_cpu_options(env, backends_started=False) == "applied"
    assert env["XLA_FLAGS"] == OPTS


@pytest.mark.parametrize("value", ["off", "OFF", "0", "no", "none", "false", " off "])
def test_switched_off(value):
    env = {"STAR_JAX_XLA_CPU": value}
    assert xla_flags.apply_cpu_options(env, backends_started=False) == "off"
    assert "XLA_FLAGS" not in env


@pytest.mark.parametrize("value", ["on", "1", "yes", "TRUE", ""])
def test_switched_on(value, recwarn):
    env = {"STAR_JAX_XLA_CPU": value}
    assert xla_flags.apply_cpu_options(env, backends_started=False) == "applied"
    assert env["XLA_FLAGS"] == OPTS and not recwarn.list


def test_unknown_switch_value_warns_and_applies():
    env = {"STAR_JAX_XLA_CPU": "disabled"}
    with pytest.warns(RuntimeWarning, match=r"STAR_JAX_XLA_CPU='disabled' is not one of .*off"):
        assert xla_flags.apply_cpu_options(env, backends_started=False) == "applied"
    assert env["XLA_FLAGS"] == OPTS


@pytest.mark.parametrize("theirs", ["--xla_backend_extra_options=xla_cpu_disable_loop_unrolling",
                                    "-xla_backend_extra_options=xla_cpu_optimize_for_size"])
def test_users_extra_options_win(theirs):
    env = {"XLA_FLAGS": "--xla_dump_to=/d " + theirs}
    assert xla_flags.apply_cpu_options(env, backends_started=False) == "user"
    assert env["XLA_FLAGS"] == "--xla_dump_to=/d " + theirs


def test_too_late_once_backends_started():
    env = {"XLA_FLAGS": "--xla_dump_to=/d"}
    assert xla_flags.apply_cpu_options(env, backends_started=True) == "late"
    assert env["XLA_FLAGS"] == "--xla_dump_to=/d"  # the cache key must not claim options not in effect


_PROBE = """
import json, os, sys
if sys.argv[1] == "jax_first":
    import jax, jax.numpy as jnp
    jnp.ones(2).block_until_ready()
import star_jax
import jax, jax.numpy as jnp
y = jax.jit(lambda x: (x * 2).sum())(jnp.arange(4.0))
print(json.dumps({"status": star_jax.xla_flags.STATUS, "flags": os.environ.get("XLA_FLAGS", ""), "y": float(y)}))
"""


@pytest.mark.parametrize("order,env_extra,status", [
    ("star_jax_first", {}, "applied"),
    ("jax_first", {}, "late"),
    ("star_jax_first", {"STAR_JAX_XLA_CPU": "off"}, "off"),
])
def test_fresh_process(order, env_extra, status):
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "STAR_JAX_XLA_CPU")}
    env.update(env_extra, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", _PROBE, order], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["status"] == status and got["y"] == 12.0
    assert (OPTS in got["flags"]) == (status == "applied")
