"""Building the kernels (translator.kernels.build): the instruction set chosen explicitly,
sources that compile for every CPU class we ship to, a build decided once, and caches that
work after a normal install.

The compile tests need a C++ compiler (the project's machines and CI have one); without
one they are skipped, saying so. The ARM target needs Debian's cross compiler
(g++-aarch64-linux-gnu, installed by .ci/run where apt-get can).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

import pytest

from translator import paths
from translator.kernels import build as kernel_build, cpu, library as native

SAPPHIRE_RAPIDS = frozenset(
    "avx avx2 bmi1 bmi2 f16c fma abm movbe xsave cx16 lahf_lm popcnt pni sse4_1 sse4_2 ssse3 "
    "avx512f avx512bw avx512cd avx512dq avx512vl avx512_bf16 avx512_fp16 amx_tile amx_bf16"
    .split())
AVX2_LAPTOP = frozenset("avx avx2 bmi1 bmi2 f16c fma abm movbe xsave cx16 lahf_lm popcnt pni "
                        "sse4_1 sse4_2 ssse3".split())


def test_isa_flags_name_the_level_and_bf16_never_the_cpus_newer_extensions():
    """A Sapphire Rapids CPU gets x86-64-v4 with AVX-512 BF16, never -march=native (which
    would turn on AVX-512 FP16 and break TensorFlow's headers); an AVX2 laptop v3; a CPU
    without AVX v2; a level counts only with every level below it; ARM gets ARMv8-A."""
    assert cpu.isa_flags("x86_64", SAPPHIRE_RAPIDS) == [
        "-march=x86-64-v4", "-mavx512bf16", "-mtune=native"]
    assert cpu.isa_flags("x86_64", SAPPHIRE_RAPIDS - {"avx512_bf16"}) == [
        "-march=x86-64-v4", "-mtune=native"]
    assert cpu.isa_flags("x86_64", AVX2_LAPTOP)[0] == "-march=x86-64-v3"
    assert cpu.isa_flags("x86_64", AVX2_LAPTOP - {"avx2"})[0] == "-march=x86-64-v2"
    assert cpu.isa_flags("x86_64", SAPPHIRE_RAPIDS - {"abm"})[0] == "-march=x86-64-v2"
    assert cpu.isa_flags("x86_64", frozenset())[0] == "-march=x86-64"
    assert cpu.isa_flags("aarch64", frozenset({"asimd", "asimddp", "bf16"})) == [
        "-march=armv8-a"]


def test_levels_spelled_out_for_compilers_that_predate_their_names(tmp_path):
    """GCC before 11 refuses -march=x86-64-v3: the build then names the level's features
    (and those of the levels below) one by one."""
    assert cpu.spelled_out("x86-64-v3")[:2] == ["-march=x86-64", "-mcx16"]
    assert "-mavx2" in cpu.spelled_out("x86-64-v3") and "-mfma" in cpu.spelled_out("x86-64-v3")
    assert "-mavx512f" not in cpu.spelled_out("x86-64-v3")
    assert {"-mavx2", "-mavx512bw"} <= set(cpu.spelled_out("x86-64-v4"))
    old = tmp_path / "g++"
    old.write_text('#!/bin/sh\ncase "$*" in *x86-64-v*) echo "bad value" >&2; exit 1;; esac\n'
                   'exit 0\n')
    old.chmod(0o755)
    flags = kernel_build.target_flags(str(old), ["-march=x86-64-v3", "-mtune=native"])
    assert flags[2:4] == ["-march=x86-64", "-mcx16"] and "-mavx2" in flags
    assert "-mtune=native" in flags and not any("x86-64-v" in f for f in flags)


@pytest.fixture(scope="module")
def compiler() -> str:
    if not native.enabled():
        pytest.skip("TRANSLATOR_NATIVE=0: kernel builds are not under test in this run")
    found = kernel_build.find_compiler()
    if found is None:
        pytest.skip("no C++ compiler: the kernels are not built here (TensorFlow's ops run)")
    return found


# x86-64-v3 (AVX2) is built and run by test_kernel_library.py:
# test_avx2_build_passes_the_same_checks
# wherever the CPU has AVX2; compiled here only where it has not
X86_TARGETS = ["x86-64-v2", "x86-64-v4", "sapphirerapids", "znver4"] + (
    [] if "avx2" in cpu.features() else ["x86-64-v3"])
# Zen 4 spelled out for compilers before GCC 13, which do not know -march=znver4
ZEN4 = ["-march=znver3", "-mavx512f", "-mavx512bw", "-mavx512cd", "-mavx512dq", "-mavx512vl",
        "-mavx512bf16", "-mavx512vnni", "-mavx512ifma", "-mavx512vbmi", "-mavx512vbmi2",
        "-mavx512bitalg", "-mavx512vpopcntdq", "-mgfni", "-mvaes", "-mvpclmulqdq"]


def _isa(compiler: str, target: str) -> list[str]:
    """-march=target, or Zen 4's features spelled out where the compiler predates it."""
    known = subprocess.run([compiler, f"-march={target}", "-E", "-x", "c++", os.devnull],
                           capture_output=True).returncode == 0
    if target == "znver4" and not known:
        return ZEN4
    return [f"-march={target}"]


def test_target_flags_turn_off_the_extensions_tensorflows_headers_break_on(compiler):
    """sapphirerapids defines __AVX512FP16__ (with GCC 12 and later; Eigen then includes a
    header GCC 12 cannot compile): the flags turn it off; znver4 has no FP16 and gets
    nothing extra."""
    if platform.machine() != "x86_64":
        pytest.skip("x86-64 targets need an x86-64 compiler")
    macros = subprocess.run([compiler, "-march=sapphirerapids", "-dM", "-E", "-x", "c++",
                             os.devnull], capture_output=True, text=True).stdout
    if "__AVX512FP16__" not in macros:
        pytest.skip(f"{compiler} does not turn on AVX-512 FP16 for sapphirerapids")
    spr = kernel_build.target_flags(compiler, ["-march=sapphirerapids"])
    assert "-mno-avx512fp16" in spr and spr.index("-mno-avx512fp16") > spr.index(
        "-march=sapphirerapids")
    assert "-mno-avx512fp16" not in kernel_build.target_flags(compiler, _isa(compiler, "znver4"))


@pytest.mark.parametrize("target", X86_TARGETS)
def test_kernels_compile_for_every_x86_target(compiler, target, tmp_path):
    """Every source compiles for each x86-64 class we ship to (compile only: this CPU
    need not run the code; running is tested by test_kernel_library.py here and, for AVX2, by
    its test_avx2_build_passes_the_same_checks)."""
    if platform.machine() != "x86_64":
        pytest.skip("x86-64 targets need an x86-64 compiler")
    log: list[str] = []
    flags = kernel_build.target_flags(compiler, _isa(compiler, target))
    objects = kernel_build.compile_objects(compiler, flags, tmp_path, log)
    assert [o.stem for o in objects] == [s.stem for s in kernel_build.sources()]
    assert all(o.stat().st_size > 0 for o in objects)


def test_kernels_compile_for_arm(compiler, tmp_path):
    """ARMv8.2-A (Graviton 2 and later, Apple silicon) with Debian's cross compiler against
    the installed TensorFlow's headers (compile only: its library cannot link here)."""
    cross = shutil.which("aarch64-linux-gnu-g++")
    if platform.machine() == "aarch64":
        cross = compiler
    if cross is None:
        pytest.skip("no aarch64 compiler (apt-get install g++-aarch64-linux-gnu)")
    flags = kernel_build.target_flags(cross, ["-march=armv8.2-a"])
    objects = kernel_build.compile_objects(cross, flags, tmp_path, [])
    assert len(objects) == len(kernel_build.sources())
    assert objects[0].read_bytes()[18] == 0xB7  # ELF e_machine: EM_AARCH64


def _fake_compiler(folder: Path, body: str) -> Path:
    """A stand-in C++ compiler: answers --version and -dM -E, logs each compile or link
    (`-c` or `-shared`) to calls.txt, then runs body."""
    fake = folder / "bin" / "c++"
    fake.parent.mkdir(parents=True)
    fake.write_text(
        "#!/bin/sh\n"
        'case "$*" in *--version*) echo "fake c++ 1.0"; exit 0;; *-dM*) exit 0;; esac\n'
        f'echo "$*" >> "{folder}/calls.txt"\n' + body)
    fake.chmod(0o755)
    return fake


@pytest.fixture
def fresh_native(tmp_path, monkeypatch):
    """The kernels switched on, a cache of this test's own, and no library loaded yet."""
    monkeypatch.setenv("TRANSLATOR_NATIVE", "1")
    monkeypatch.setenv("TRANSLATOR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(native, "_state", {})
    return tmp_path


def test_build_is_keyed_and_written_whole(fresh_native, monkeypatch):
    """The library lands in the cache under a name keyed by sources, TensorFlow, compiler
    and its version, flags and CPU; a finished build leaves the library and its log."""
    fake = _fake_compiler(
        fresh_native, 'while [ "$1" != "-o" ]; do shift; done\necho lib > "$2"\n')
    plan = kernel_build.plan(str(fake))
    assert plan.library.parent == fresh_native / "cache" / "kernels"
    assert plan.library.name.startswith("kernels-") and plan.library.suffix == ".so"
    assert "-march=native" not in plan.flags and "-O3" in plan.flags
    monkeypatch.setenv("TRANSLATOR_MARCH", "x86-64-v3")
    assert kernel_build.plan(str(fake)).library != plan.library
    monkeypatch.delenv("TRANSLATOR_MARCH")
    kernel_build.ensure_built(plan)
    assert sorted(p.name for p in plan.library.parent.glob("kernels-*")) == sorted(
        [plan.library.name, plan.log.name, plan.library.with_suffix(".lock").name])
    assert plan.library.read_text() == "lib\n"
    assert "fake c++ 1.0" not in plan.log.read_text() and "exit status 0" in plan.log.read_text()


def test_a_failed_build_is_decided_once_with_one_line_and_a_log(fresh_native, monkeypatch,
                                                                capsys):
    """A failing compiler: the compiling line, then one line (what failed, the log's path,
    how to retry),
    the compiler's full output only in the log, a marker beside it, no library. A later
    process does not compile again and says the same in one line; a retry compiles."""
    noise = "\n".join(f"noise line {i}" for i in range(200))
    fake = _fake_compiler(fresh_native, f"echo '{noise}'\n"
                          "echo 'PacketMathFP16.h:740: error: expected initializer' >&2\n"
                          "exit 1\n")
    monkeypatch.setenv("CXX", str(fake))
    assert native.library() is None and native.library() is None
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 2 and "compiling the kernels" in lines[0] and "noise line" not in err
    assert "PacketMathFP16.h:740: error" in err and "python -m translator info --rebuild" in err
    plan = kernel_build.plan(str(fake))
    assert f"log: {plan.log}" in err and plan.marker.exists() and not plan.library.exists()
    assert "noise line 199" in plan.log.read_text()
    compiles = len((fresh_native / "calls.txt").read_text().splitlines())

    monkeypatch.setattr(native, "_state", {})  # as a new process
    assert native.library() is None
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "failed before" in err and str(plan.log) in err
    assert len((fresh_native / "calls.txt").read_text().splitlines()) == compiles
    assert native.status().startswith("off: the build failed")

    assert native.library(retry=True) is None  # retried: compiles again (and fails again)
    assert len((fresh_native / "calls.txt").read_text().splitlines()) == 2 * compiles


def test_the_first_error_line_is_named_and_a_killed_compiler_leaves_no_marker(
        fresh_native, monkeypatch):
    """The one line names the compiler's first 'error:' line (not an included errors.h);
    a compiler killed by the system (out of memory) is a failure of the moment: no
    marker, the next process tries again."""
    fake = _fake_compiler(fresh_native, "echo 'In file included from tensorflow/errors.h:3'\n"
                          "echo 'simd.h:9:1: error: expected declaration'\nexit 1\n")
    plan = kernel_build.plan(str(fake))
    with pytest.raises(kernel_build.BuildError, match="simd.h:9:1: error: expected decl"):
        kernel_build.ensure_built(plan)
    assert plan.marker.exists()
    killed = _fake_compiler(fresh_native / "k", "echo 'g++: fatal error: Killed signal "
                            "terminated program cc1plus'\nexit 1\n")
    plan = kernel_build.plan(str(killed))
    with pytest.raises(kernel_build.BuildError, match="Killed signal"):
        kernel_build.ensure_built(plan)
    assert plan.log.exists() and not plan.marker.exists()


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv("TRANSLATOR_NATIVE", "0")
    assert native.library() is None and native.status() == "off: TRANSLATOR_NATIVE=0"


def test_no_compiler_found_falls_back_saying_so(fresh_native, monkeypatch, capsys):
    monkeypatch.setenv("CXX", "")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert native.library() is None
    assert "no C++ compiler found" in capsys.readouterr().err
    assert native.status() == "off: no C++ compiler found (install g++ or set CXX)"


def test_missing_kernel_sources_fall_back(fresh_native, monkeypatch, capsys):
    """An install without csrc/*.cc says so and uses TensorFlow's ops (no crash)."""
    monkeypatch.setattr(kernel_build, "SOURCE_DIR", fresh_native / "csrc")
    monkeypatch.setattr(kernel_build, "find_compiler", lambda: "c++")
    assert native.library() is None
    assert "no kernel sources in" in capsys.readouterr().err


def test_cache_is_the_checkout_data_folder_or_the_users_cache(tmp_path, monkeypatch):
    """In a source checkout the cache is its data/ folder; a package installed into
    site-packages caches under $XDG_CACHE_HOME (or ~/.cache); TRANSLATOR_CACHE wins."""
    monkeypatch.delenv("TRANSLATOR_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    checkout = tmp_path / "clone"
    (checkout / "translator").mkdir(parents=True)
    (checkout / "setup.cfg").write_text("[metadata]\n")
    assert paths.cache_root(checkout / "translator") == checkout / "data"
    installed = tmp_path / "venv" / "lib" / "python3.11" / "site-packages" / "translator"
    installed.mkdir(parents=True)
    assert paths.cache_root(installed) == tmp_path / "xdg" / "lstm-translator"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert paths.cache_root(installed) == Path.home() / ".cache" / "lstm-translator"
    monkeypatch.setenv("TRANSLATOR_CACHE", str(tmp_path / "mine"))
    assert paths.cache_root(installed) == tmp_path / "mine"
    assert paths.kernel_cache() == tmp_path / "mine" / "kernels"
    assert paths.corpus_cache() == tmp_path / "mine" / "corpora"
