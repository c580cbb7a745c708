"""tfquant under concurrent use: its TensorFlow ops called from many Python threads at
once, its LiteRT delegate invoked from several threads, and its delegate's task pools
started and shut down while threads and the process come and go.

The checks live in tests/concurrency_checks.py (benchmarks/stress_concurrency.py runs
them N times in a row). Each runs in a child process: TensorFlow's thread settings
only take effect before it initializes, and a crash or hang in native code must fail
one test, not take pytest down.
"""

import numpy as np
import pytest

import concurrency_checks as checks


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """W4A8 and W2A8 exports (INT4 / INT2 FULLY_CONNECTED filters) and their inputs."""
    folder = str(tmp_path_factory.mktemp("concurrency"))
    checks.export_models(folder)
    return folder


@pytest.fixture(scope="module")
def op_reference(tmp_path_factory):
    """The ops' outputs from one Python thread with one inter- and one intra-op thread."""
    path = str(tmp_path_factory.mktemp("ops") / "reference.npz")
    assert checks.check_child(["ops", "1", "1", path, "write"]) == []
    return path


@pytest.mark.parametrize("inter,intra", [(4, 2), (2, 4)])
def test_ops_on_eight_threads_are_bit_identical_to_one_thread(op_reference, inter, intra):
    """packed_matmul (4 and 2 bits) and fake_quant (per tensor and per channel, clipped
    and learned range gradients), forward and gradients, eagerly and in shared
    tf.functions, from 8 Python threads at once with TensorFlow's inter/intra-op pools
    set: every output equals the single-threaded one bit for bit."""
    assert checks.check_child(["ops", str(inter), str(intra), op_reference]) == []


def test_delegate_interpreters_on_several_threads_match_builtin_kernels(models):
    """Six threads invoke W4/W2 interpreters with the delegate at batch sizes 1..128:
    each with its own delegate, then all sharing one delegate (one task pool), then
    creating, invoking and destroying interpreters repeatedly. Outputs equal the
    builtin kernels' bit for bit."""
    assert checks.check_child(["delegate", models]) == []


@pytest.mark.parametrize("mode", checks.EXIT_MODES)
def test_process_exits_cleanly_with_delegate_interpreters_alive(models, mode):
    """A child leaves with delegate interpreters (and their pool threads) alive: by
    returning from main, after a thread called sys.exit(), and while daemon threads are
    inside invoke(). Exit code 0 within the timeout: no hang joining pool workers, no
    crash tearing them down."""
    assert checks.check_exit(models, mode) == []


def test_the_comparison_sees_one_changed_value():
    """The checks compare bit for bit: one value off by one ulp is a failure."""
    want = np.linspace(-1, 1, 50, dtype=np.float32)
    got = want.copy()
    got[17] = np.nextafter(got[17], np.float32(2))
    assert checks.compare("same", [want.copy()], [want]) == []
    assert checks.compare("ulp", [got], [want]) and checks.compare("shape", [want[:3]], [want])
