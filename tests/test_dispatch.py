"""Dispatch: what is compiled and detected, the registry, overrides and their precedence
(argument > use_backend > QKERNELS_BACKEND > automatic), the `qkernels info` command, versions."""

from __future__ import annotations

import asyncio
import os
import platform
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import qkernels
from qk_support import subprocess_env
from qkernels import dispatch, ffi, lib

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = qkernels.backends()
KERNELS = qkernels.kernels()
AVAILABLE = [b for b in BACKENDS if b.available]
UNAVAILABLE = [b for b in BACKENDS if not b.available]
FEATURE_NAMES = [ffi.string(lib.qk_cpu_feature_name(i)).decode() for i in range(lib.QK_CPU_FEATURE_COUNT)]


@pytest.fixture(autouse=True)
def _no_backend_from_environment(monkeypatch):
    monkeypatch.delenv("QKERNELS_BACKEND", raising=False)


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    # groups of 128: a multiple of every kernel's group_multiple but one's (every_kernel's weights)
    qw = qkernels.quantize_weights(rng.standard_normal((8, 256)).astype(np.float32), bits=4, group_size=128)
    return rng.standard_normal((3, 256)).astype(np.float16), qw


@pytest.fixture
def every_kernel(problem):
    """For each available kernel, what it is forced on: problem's x (as float32 for a kernel of float32
    input only: x86_avx512's bf16x3 variants) and weights (the same matrix in groups of 32 for a
    kernel of small groups only: x86_avx512's g32 variants)."""
    x, qw = problem
    small = qkernels.quantize_weights(qkernels.dequantize(qw), bits=4, group_size=32)
    return [(k, x if "float16" in k.dtypes else x.astype(np.float32),
             qw if k.runs(k.mode, 4, 128, qw.K, k.dtypes[0]) else small) for k in KERNELS if k.available]


# ---------------------------------------------------------------- backends, kernels, CPU features


def test_backends_are_every_registered_id_best_first():
    assert sorted(b.code for b in BACKENDS) == list(range(1, lib.qk_backend_count() + 1))
    priorities = [b.priority for b in BACKENDS]
    assert priorities == sorted(priorities, reverse=True)
    names = [b.name for b in BACKENDS]
    assert len(set(names)) == len(names) and all(names)
    assert [b.name for b in BACKENDS if not b.library][-1] == "ref"  # of the built-in ones; a library may rank below
    for b in BACKENDS:
        assert b.available == (b.compiled and b.detected), b
        assert (b.reason == "") == b.available, b
        found = ffi.new("qk_backend *")
        assert lib.qk_backend_find(b.name.encode(), found) == lib.QK_OK and found[0] == b.code
    ref = next(b for b in BACKENDS if b.name == "ref")
    assert ref.compiled and ref.detected and ref.available and ref.library == ""


def test_kernels_registry_is_consistent():
    by_name = {b.name: b for b in BACKENDS}
    names = [k.name for k in KERNELS]
    assert len(set(names)) == len(names), "kernel names must be unique"
    assert lib.qk_kernel_count() == len(KERNELS) >= 2
    for k in KERNELS:
        assert k.backend in by_name, k
        assert k.available == by_name[k.backend].available, f"{k.name}: available iff its backend is"
        assert k.mode in ("a16", "a8") and k.bits and set(k.bits) <= {4, 8}
        assert k.dtypes and set(k.dtypes) <= {"float32", "float16", "bfloat16"}
        assert k.group_multiple >= 1 and k.max_m >= 0 and k.max_group_size >= 0
        if k.max_group_size:
            assert k.max_group_size % k.group_multiple == 0, k.name
        # <backend>_<mode>_<weight bits>_<tile>
        assert k.name.startswith(k.backend + "_") and f"_{k.mode}_" in k.name, k.name
    # Best first: a kernel never follows one of a lower-priority backend.
    priorities = [by_name[k.backend].priority for k in KERNELS]
    assert priorities == sorted(priorities, reverse=True), "the registry lists kernels best backend first"
    # The reference backend runs everything, in both modes.
    for mode in ("a16", "a8"):
        ref = [k for k in KERNELS if k.backend == "ref" and k.mode == mode]
        assert ref, f"no reference kernel for {mode}"
        assert any(set(k.bits) == {4, 8} and len(k.dtypes) == 3 and k.group_multiple == 1 and k.max_m == 0
                   and k.max_group_size == 0 for k in ref)


def test_cpu_features_are_named_bits():
    features = qkernels.cpu_features()
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES) and all(FEATURE_NAMES)
    assert len(set(features)) == len(features) and set(features) <= set(FEATURE_NAMES)
    mask = lib.qk_cpu_features()
    assert features == [n for i, n in enumerate(FEATURE_NAMES) if mask >> i & 1]
    assert all(lib.qk_cpu_has(i) == (mask >> i & 1) for i in range(lib.QK_CPU_FEATURE_COUNT))
    assert mask >> lib.QK_CPU_FEATURE_COUNT == 0
    for outside in (lib.QK_CPU_FEATURE_COUNT, 64):
        assert lib.qk_cpu_feature_name(outside) == ffi.NULL and lib.qk_cpu_has(outside) == 0
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        assert not any(f.startswith("neon") for f in features)
        flags = _cpuinfo_flags()
        if flags:  # a feature is reported only where the CPU (and so the kernel's cpuinfo) has it
            renamed = {"avx512_vbmi": "avx512vbmi"}  # the rest have /proc/cpuinfo's names
            for f in features:
                assert renamed.get(f, f) in flags, f"{f} detected but not in /proc/cpuinfo"
    elif machine in ("aarch64", "arm64"):
        assert not any(f.startswith(("avx", "amx", "fma", "f16c")) for f in features)


def _cpuinfo_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    match = re.search(r"^flags\s*:(.*)$", text, re.M)
    return set(match.group(1).split()) if match else set()


def test_backend_detection_follows_cpu_features():
    """An x86 / ARM backend is detected only on its architecture."""
    features = set(qkernels.cpu_features())
    for b in BACKENDS:
        if b.name.startswith("x86_") and b.detected:
            assert features & {"avx2", "avx512f", "amx_tile"}
        if b.name.startswith("arm_") and b.detected:
            assert "neon" in features


# ---------------------------------------------------------------- automatic choice


def _expected_kernel(mode, bits, dtype, G, K, M, backend=None):
    """Dispatch as documented: the first registry line, among available kernels (of `backend` if
    forced), that runs mode / bits / dtype / group size (its max_group_size bounds a group's length,
    min(G, K)) and prefers this M; else the first that runs it whatever its preferred M."""
    fits = [k for k in KERNELS if k.available and (backend is None or k.backend == backend)
            and k.runs(mode, bits, G, K, dtype)]
    preferred = [k for k in fits if k.max_m == 0 or M <= k.max_m]
    return (preferred or fits)[0]


@pytest.mark.parametrize("mode", ["a16", "a8"])
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_select_follows_the_registry(mode, bits, dtype):
    rng = np.random.default_rng(1)
    limits = {k.max_m for k in KERNELS if k.max_m}
    limits_g = sorted({k.max_group_size for k in KERNELS if k.max_group_size})
    for G, K in ((32, 64), (64, 128), (3, 12), (128, 128)) + tuple((g, 2 * g) for g in limits_g) + tuple(
            (2 * g, 2 * g) for g in limits_g) + tuple((2 * g, 64) for g in limits_g):  # G > K: one group of K
        qw = qkernels.quantize_weights(rng.standard_normal((4, K)).astype(np.float32), bits=bits, group_size=G)
        for M in sorted({1, 2, 16, 17, 300} | limits | {m + 1 for m in limits}):
            x = np.zeros((M, K), dtype)
            chosen = qkernels.select(x, qw, mode)
            assert chosen == _expected_kernel(mode, bits, dtype, G, K, M), (G, M)
            for b in AVAILABLE:
                try:
                    forced = qkernels.select(x, qw, mode, backend=b.name)
                except qkernels.UnsupportedError:
                    assert not any(k.backend == b.name and k.runs(mode, bits, G, K, dtype) for k in KERNELS)
                    continue
                assert forced == _expected_kernel(mode, bits, dtype, G, K, M, backend=b.name)


def test_select_reports_the_kernel_matmul_runs(problem):
    """matmul runs the kernel select() names (select makes the plan matmul then runs: one pack, for
    the kernel's backend), and forcing that kernel gives the same bits."""
    x, _ = problem
    for mode in ("a16", "a8"):
        qw = qkernels.quantize_weights(np.random.default_rng(2).standard_normal((8, 256)).astype(np.float32),
                                       bits=4, group_size=64)
        chosen = qkernels.select(x, qw, mode)
        assert chosen.available and chosen.mode == mode
        backend = next(b for b in BACKENDS if b.name == chosen.backend)
        assert set(qw._packs) == {backend.code}
        y = qkernels.matmul(x, qw, mode)
        assert set(qw._packs) == {backend.code} and len(qw._plans) == 1
        forced = qkernels.matmul(x, qw, mode, kernel=chosen.name)
        np.testing.assert_array_equal(y.view(np.uint16), forced.view(np.uint16))


def test_select_with_a_forced_kernel_returns_it(every_kernel):
    for k, x, qw in every_kernel:
        assert qkernels.select(x, qw, k.mode, kernel=k.name) == k


# ---------------------------------------------------------------- use_backend


OTHER = BACKENDS[0].name  # any registered backend other than ref, where there is one


def test_use_backend_nests_and_restores():
    assert dispatch.forced_backend() is None
    with qkernels.use_backend("ref"):
        assert dispatch.forced_backend() == "ref"
        with qkernels.use_backend(OTHER):
            assert dispatch.forced_backend() == OTHER
            with qkernels.use_backend("auto"):
                assert dispatch.forced_backend() is None
            assert dispatch.forced_backend() == OTHER
        assert dispatch.forced_backend() == "ref"
    assert dispatch.forced_backend() is None


def test_use_backend_restores_after_an_exception():
    with pytest.raises(KeyError):
        with qkernels.use_backend("ref"):
            raise KeyError("boom")
    assert dispatch.forced_backend() is None
    with qkernels.use_backend("ref"):
        with pytest.raises(qkernels.InvalidArgumentError):
            with qkernels.use_backend("nope"):
                pass
        assert dispatch.forced_backend() == "ref"


def test_use_backend_is_per_thread_and_per_task():
    seen = {}
    with qkernels.use_backend(OTHER):
        thread = threading.Thread(target=lambda: seen.setdefault("thread", dispatch.forced_backend()))
        thread.start()
        thread.join()
    assert seen["thread"] is None

    async def task(name, delay):
        with qkernels.use_backend(name):
            await asyncio.sleep(delay)
            return dispatch.forced_backend()

    async def both():
        return await asyncio.gather(task("ref", 0.02), task(OTHER, 0.01))

    assert asyncio.run(both()) == ["ref", OTHER]


# ---------------------------------------------------------------- precedence


def _fails(fn) -> bool:
    try:
        fn()
    except qkernels.BackendUnavailableError:
        return True
    return False


@pytest.fixture
def unavailable():
    if not UNAVAILABLE:
        pytest.skip("every backend is available here")
    return UNAVAILABLE[0].name


def test_precedence_argument_over_context_over_environment(problem, unavailable, monkeypatch):
    """With an unavailable backend U and the reference backend R, whichever is forced at the
    highest level decides whether the call fails."""
    x, qw = problem
    run = lambda **kw: qkernels.matmul(x, qw, **kw)  # noqa: E731

    assert not _fails(run)  # automatic
    monkeypatch.setenv("QKERNELS_BACKEND", unavailable)
    assert _fails(run)  # environment over automatic
    with qkernels.use_backend("ref"):
        assert not _fails(run)  # context over environment
        assert _fails(lambda: run(backend=unavailable))  # argument over context
    with qkernels.use_backend(unavailable):
        assert _fails(run)
        assert not _fails(lambda: run(backend="ref"))  # argument over context
    monkeypatch.setenv("QKERNELS_BACKEND", "ref")
    with qkernels.use_backend(unavailable):
        assert _fails(run)  # context over environment
    assert not _fails(run)
    assert _fails(lambda: run(backend=unavailable))  # argument over environment


def test_environment_auto_and_empty_mean_automatic(problem, monkeypatch):
    x, qw = problem
    expected = qkernels.select(x, qw, "a16")
    for value in ("auto", ""):
        monkeypatch.setenv("QKERNELS_BACKEND", value)
        assert qkernels.select(x, qw, "a16") == expected
    monkeypatch.setenv("QKERNELS_BACKEND", "ref")
    assert qkernels.select(x, qw, "a16").backend == "ref"


def test_environment_is_read_on_every_call(problem, unavailable, monkeypatch):
    x, qw = problem
    for _ in range(2):
        monkeypatch.setenv("QKERNELS_BACKEND", unavailable)
        assert _fails(lambda: qkernels.quantized_matmul(x, qw.data, qw.scales, bits=4, group_size=qw.group_size))
        monkeypatch.delenv("QKERNELS_BACKEND")
        qkernels.quantized_matmul(x, qw.data, qw.scales, bits=4, group_size=qw.group_size)


def test_kernel_argument_outranks_the_environment(every_kernel, unavailable, monkeypatch):
    monkeypatch.setenv("QKERNELS_BACKEND", unavailable)
    for k, x, qw in every_kernel:
        qkernels.matmul(x, qw, k.mode, kernel=k.name)


def test_kernel_argument_outranks_use_backend(every_kernel, unavailable):
    """dispatch's documented precedence puts the call's kernel= argument above use_backend."""
    for k, x, qw in every_kernel:
        with qkernels.use_backend(unavailable):
            y = qkernels.matmul(x, qw, k.mode, kernel=k.name)
        np.testing.assert_array_equal(y, qkernels.matmul(x, qw, k.mode, kernel=k.name))


def test_use_backend_auto_inside_a_forced_block_restores_automatic_choice(problem, unavailable):
    x, qw = problem
    with qkernels.use_backend(unavailable):
        assert _fails(lambda: qkernels.matmul(x, qw))
        with qkernels.use_backend("auto"):
            qkernels.matmul(x, qw)


# ---------------------------------------------------------------- command line, version


# qkernels's own backends, every architecture's and the CUDA library's: native/core/api.c's list,
# written out here so that a backend dropped from it fails.
PROJECT_BACKENDS = {"x86_amx", "x86_avx512", "x86_avx2", "arm_neon_i8mm", "arm_neon_dotprod", "cuda", "ref"}
# One that no build for this architecture has, and why `qkernels info` says it is missing.
if platform.machine().lower() in ("aarch64", "arm64"):
    OTHER_ARCHITECTURE = ("x86_amx", "not built: x86-64 builds only")
else:
    OTHER_ARCHITECTURE = ("arm_neon_i8mm", "not built: aarch64 builds only")


def _check_info_output(output: str):
    assert qkernels.__version__ in output
    for b in BACKENDS:
        assert re.search(rf"^{re.escape(b.name)}\s", output, re.M), f"backend {b.name} missing:\n{output}"
    for b in dispatch.backends(not_built=True)[len(BACKENDS):]:
        assert re.search(rf"^{re.escape(b.name)} +no +- +- +{re.escape(b.reason)}$", output, re.M), (
            f"backend {b.name} (not built) missing:\n{output}")
    for k in KERNELS:
        assert k.name in output, f"kernel {k.name} missing"
    for feature in qkernels.cpu_features():
        assert feature in output


@pytest.mark.parametrize("argv", [["-m", "qkernels", "info"], ["-m", "qkernels"]], ids=["info", "no-command"])
def test_python_m_qkernels_info(argv, tmp_path):
    result = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=subprocess_env(),
                            cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    _check_info_output(result.stdout)


def test_backends_not_built_are_the_project_backends_this_library_lacks():
    every = dispatch.backends(not_built=True)
    assert every[:len(BACKENDS)] == BACKENDS  # the registered ones first, as backends() gives them
    missing = every[len(BACKENDS):]
    assert {b.name for b in every} >= PROJECT_BACKENDS
    assert {b.name for b in missing} == PROJECT_BACKENDS - {b.name for b in BACKENDS}
    assert all(not (b.compiled or b.detected or b.available) and b.code == 0 for b in missing)
    assert all(b.reason.startswith("not built: ") for b in missing)
    assert dict((b.name, b.reason) for b in missing)[OTHER_ARCHITECTURE[0]] == OTHER_ARCHITECTURE[1]
    if "cuda" not in {b.name for b in BACKENDS}:
        assert "libqkernels_cuda.so is built only where CMake finds nvcc" in next(
            b.reason for b in missing if b.name == "cuda")
    # forcing one of them is refused as not built, with the reason, not as an unknown name
    for b in missing:
        with pytest.raises(qkernels.BackendUnavailableError, match=f"backend '{b.name}' is {re.escape(b.reason)}"):
            dispatch.backend_code(b.name)


def test_info_lists_every_backend_compiled_or_not(capsys):
    """The backend table: the registered backends as before (compiled yes), then every backend of
    the project's that this library lacks, compiled no, with why."""
    from qkernels import cli

    assert cli.main(["info"]) == 0
    lines = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("backend "))
    assert lines[start] == f"{'backend':18} {'compiled':9} {'detected':9} {'chosen (M = 1,16,512)':28} note"
    table = lines[start + 1:lines.index("", start)]
    every = dispatch.backends(not_built=True)
    assert [row.split()[0] for row in table] == [b.name for b in every]
    qw = qkernels.quantize_weights(np.zeros((64, 512), np.float32), bits=4, group_size=128)
    picks = {(mode, M): qkernels.select(np.zeros((M, 512), np.float16), qw, mode).backend
             for mode in ("a16", "a8") for M in cli.DISPATCH_MS}
    for b, row in zip(BACKENDS, table):  # as the rows have always been
        chosen = "; ".join(f"{mode} M={','.join(ms)}" for mode in ("a16", "a8")
                           if (ms := [str(M) for M in cli.DISPATCH_MS if picks[mode, M] == b.name]))
        chosen = chosen or ("device arrays only" if b.device else "-")
        detected = "yes" if b.detected else "no"
        assert row == f"{b.name:18} {'yes':9} {detected:9} {chosen:28} {b.reason}".rstrip()
    for b, row in zip(every[len(BACKENDS):], table[len(BACKENDS):]):
        assert row == f"{b.name:18} {'no':9} {'-':9} {'-':28} {b.reason}"
    name, reason = OTHER_ARCHITECTURE
    assert f"{name:18} {'no':9} {'-':9} {'-':28} {reason}" in table


def test_info_into_a_closed_pipe_stops_quietly(tmp_path):
    """`qkernels info | head`: the reader gone, the command stops without a traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write now fails with EPIPE
    try:
        result = subprocess.run([sys.executable, "-m", "qkernels", "info"], stdout=write_end, stderr=subprocess.PIPE,
                                text=True, env=subprocess_env(), cwd=tmp_path, timeout=120)
    finally:
        os.close(write_end)
    assert result.returncode == 1
    assert result.stderr == ""


def test_info_and_bench_parse_without_torch(tmp_path):
    """torch is optional: `qkernels info` runs, and `bench --help` parses, when it cannot be imported."""
    block_torch = "import sys; sys.modules['torch'] = None; from qkernels import cli; sys.exit(cli.main(sys.argv[1:]))"
    result = subprocess.run([sys.executable, "-c", block_torch, "info"], capture_output=True, text=True,
                            env=subprocess_env(), cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    _check_info_output(result.stdout)
    result = subprocess.run([sys.executable, "-c", block_torch, "bench", "--help"], capture_output=True, text=True,
                            env=subprocess_env(), cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr


def test_qkernels_console_script_info(tmp_path):
    """The `qkernels` script, where the package is installed with it (skipped in a source tree)."""
    import shutil

    script = shutil.which("qkernels")
    if script is None:
        pytest.skip("the qkernels console script is not installed")
    result = subprocess.run([script, "info"], capture_output=True, text=True, env=subprocess_env(), cwd=tmp_path,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "ref" in result.stdout


def test_info_reports_the_environment_override(tmp_path):
    env = subprocess_env() | {"QKERNELS_BACKEND": "ref"}
    result = subprocess.run([sys.executable, "-m", "qkernels", "info"], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "QKERNELS_BACKEND=ref" in result.stdout


def _pyproject_version() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    try:
        import tomllib

        return tomllib.loads(text)["project"]["version"]
    except ImportError:  # Python 3.10
        return re.search(r'^version\s*=\s*"([^"]+)"', text, re.M).group(1)


def test_version_matches_pyproject():
    if not (ROOT / "pyproject.toml").is_file():
        pytest.skip("not run from a source tree")
    version = _pyproject_version()
    assert qkernels.__version__ == version
    assert ffi.string(lib.qk_version()).decode() == version
    assert re.fullmatch(r"\d+\.\d+\.\d+", version)


def test_abi_version():
    assert lib.qk_abi_version() == lib.QK_ABI_VERSION >= 1


# ---------------------------------------------------------------- threads


@pytest.mark.parametrize("mode", ["a16", "a8"])
def test_thread_count_is_settable_and_leaves_results_unchanged(mode):
    rng = np.random.default_rng(1)
    # Large enough that the CPU kernels split it over three threads (they keep small problems on one).
    qw = qkernels.quantize_weights(rng.standard_normal((264, 2048)).astype(np.float32), bits=4, group_size=32)
    x = rng.standard_normal((9, 2048)).astype(np.float32)
    default = qkernels.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            qkernels.set_num_threads(threads)
            assert qkernels.get_num_threads() in (1, threads)  # 1: a build without OpenMP
            results.append(qkernels.matmul(x, qw, mode))
    finally:
        qkernels.set_num_threads(0)
    assert qkernels.get_num_threads() == default
    for y in results[1:]:  # each output is computed by one thread, in one order: bitwise equal
        assert np.array_equal(y, results[0])


@pytest.mark.parametrize("value, warning", [("3", None), ("abc", "not a positive integer"), ("-3", "not a positive integer"),
                                            ("3x", "not a positive integer"), ("1000", "above QK_MAX_THREADS")])
def test_environment_thread_count_is_used_or_reported(value, warning, tmp_path):
    env = subprocess_env() | {"QKERNELS_NUM_THREADS": value}
    code = "import os, qkernels; print(qkernels.get_num_threads(), len(os.sched_getaffinity(0)))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stderr
    threads, cpus = map(int, run.stdout.split())
    if warning is None:
        assert (threads, run.stderr) == (3, "")
    else:
        assert warning in run.stderr and "QKERNELS_NUM_THREADS" in run.stderr
        assert threads == (256 if value == "1000" else min(cpus, 256))


@pytest.mark.parametrize("threads", [-1, 1.5, True, "2"])
def test_bad_thread_counts_raise(threads):
    with pytest.raises(qkernels.InvalidArgumentError, match="threads"):
        qkernels.set_num_threads(threads)
