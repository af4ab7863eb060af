"""The native row sums (``shiftsim.optim._native``, ``rowsums.c``): accuracy against a float64
reference, sums independent of the number of rows, their place and the compiler's flags,
inputs they leave to torch, and every way the build can fail (one warning, then torch's sums)."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import subprocess
import warnings

import numpy as np
import pytest
import torch

import shiftsim as ss
from shiftsim.optim import _native
from shiftsim.optim._kernels import row_dot, row_dots

PAIRS = ((0, 0), (1, 2), (1, 0))


@pytest.fixture()
def fresh(monkeypatch, tmp_path):
    """An empty cache folder and no decision yet (the build-failure tests)."""
    monkeypatch.setenv("SHIFTSIM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(_native.ENV, "1")
    _native._reset()
    yield tmp_path / "cache"
    monkeypatch.undo()
    _native._reset()


def _reference(ts, pairs):
    return [(ts[a].double() * ts[b].double()).sum(1) for a, b in pairs]


def _magnitude(ts, pairs):
    return [(ts[a].double() * ts[b].double()).abs().sum(1) for a, b in pairs]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 255, 256, 257, 1000, 70_001])
def test_sums_match_a_float64_reference(native, dtype, n):
    """Every pair's sum within a few ulps of the float64 sum, relative to the sum of the
    products' magnitudes (the classical bound for a sum), for all the tail lengths."""
    gen = torch.Generator().manual_seed(n)
    ts = [torch.randn(3, n, generator=gen, dtype=dtype) for _ in range(3)]
    sums = row_dots(ts, PAIRS)
    bound = 1e-6 if dtype == torch.float32 else 1e-14
    for s, ref, mag in zip(sums, _reference(ts, PAIRS), _magnitude(ts, PAIRS)):
        assert s.dtype == dtype and s.shape == (3,)
        assert ((s.double() - ref).abs() <= bound * mag + 1e-300).all()


def test_hand_computed_sums(native):
    a = torch.tensor([[1.0, 2.0, 3.0], [0.5, -1.0, 4.0]])
    b = torch.tensor([[4.0, 5.0, 6.0], [2.0, 2.0, 0.25]])
    ab, aa, bb = row_dots([a, b], ((0, 1), (0, 0), (1, 1)))
    assert ab.tolist() == [32.0, 0.0] and aa.tolist() == [14.0, 17.25]
    assert bb.tolist() == [77.0, 8.0625]


def test_a_rows_sums_do_not_depend_on_the_other_rows(native):
    """Row k alone, as a row of a strided slice of a wider buffer, and among 130 rows: the
    same bits (what makes a fleet member's numbers equal to its run alone)."""
    gen = torch.Generator().manual_seed(1)
    big = [torch.randn(130, 26_122, generator=gen) for _ in range(3)]
    sums = [s.clone() for s in row_dots(big, PAIRS)]
    wide = [torch.cat([t, torch.randn(130, 7, generator=gen)], 1) for t in big]
    sliced = row_dots([w[:, :26_122] for w in wide], PAIRS)
    for s, t in zip(sums, sliced):
        assert torch.equal(s, t)
    for k in (0, 57, 129):
        alone = row_dots([t[k:k + 1] for t in big], PAIRS)
        for s, t in zip(sums, alone):
            assert torch.equal(s[k:k + 1], t)


def test_rows_split_across_threads_give_the_same_bits(native, monkeypatch):
    """Above SPLIT_FROM elements the rows are shared among torch's threads: the same sums,
    bit for bit, as one thread, for row counts that do and do not divide evenly."""
    gen = torch.Generator().manual_seed(4)
    old = torch.get_num_threads()
    try:
        for K in (2, 7, 33):
            ts = [torch.randn(K, 5000, generator=gen) for _ in range(3)]
            torch.set_num_threads(1)
            one = [s.clone() for s in row_dots(ts, PAIRS)]
            with monkeypatch.context() as m:
                m.setattr(_native, "SPLIT_FROM", 1)
                for threads in (2, 3):
                    torch.set_num_threads(threads)
                    assert _native._parts(K) == min(K, threads)
                    for s, t in zip(one, row_dots(ts, PAIRS)):
                        assert torch.equal(s, t)
    finally:
        torch.set_num_threads(old)


def _sums_in_child(queue):
    # no torch operation that runs OpenMP threads: those hang in a child forked after the
    # parent ran them (torch's, not ours)
    ts = [torch.from_numpy(np.ones((4, 300_000), dtype=np.float32)) for _ in range(2)]
    queue.put([s.tolist() for s in _native.row_sums(ts, ((0, 1),))])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_splits_rows_without_the_parents_threads(native, monkeypatch):
    """The parent's thread pool does not exist in a forked child: the child makes its own
    instead of waiting forever on the parent's."""
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        ts = [torch.from_numpy(np.ones((4, 300_000), dtype=np.float32)) for _ in range(2)]
        _native.row_sums(ts, ((0, 1),))  # the pool now exists in this process
        assert _native._executor is not None
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        child = ctx.Process(target=_sums_in_child, args=(queue,))
        child.start()
        child.join(60)
        if child.is_alive():
            child.kill()
        assert child.exitcode == 0, "the child hung or failed"
        assert queue.get(timeout=5) == [[300_000.0] * 4]
    finally:
        torch.set_num_threads(old)


def test_sums_do_not_depend_on_the_compilers_optimisation(native, tmp_path):
    """The library built without optimisation or vectorisation (-O0, no -march) gives the
    same bits as the cached -O3 -march=native one: the order of the additions is the
    source's, not the compiler's (here the -O0 one also reads the rows in three segments)."""
    cc = _native._compiler()
    assert cc is not None
    plain = tmp_path / "rowsums-O0.so"
    subprocess.run([cc, "-O0", "-std=c11", "-ffp-contract=off", "-fPIC", "-shared",
                    str(_native.SOURCE), "-o", str(plain)], check=True)
    lib = ctypes.CDLL(str(plain))
    gen = torch.Generator().manual_seed(2)
    for dtype in (torch.float32, torch.float64):
        ts = [torch.randn(4, 3001, generator=gen, dtype=dtype) for _ in range(3)]
        fast = torch.stack(row_dots(ts, PAIRS))
        out = torch.empty(3, 4, dtype=dtype)
        fn = lib.shiftsim_rowsums_f32 if dtype == torch.float32 else lib.shiftsim_rowsums_f64
        fn.argtypes = [ctypes.c_void_p] * 2 + [ctypes.c_int, ctypes.c_void_p, ctypes.c_int] + \
            [ctypes.c_void_p] * 2 + [ctypes.c_int64] * 2 + [ctypes.c_void_p, ctypes.c_int64] + \
            [ctypes.c_int] * 2 + [ctypes.c_void_p, ctypes.c_int64]
        widths = (7, 1000, 1994)  # segments: columns 0-6, 7-1006, 1007-3000
        segs = [t.split(widths, 1) for t in ts]
        ptrs = (ctypes.c_void_p * 9)(*[s.data_ptr() for t in segs for s in t])
        lds = (ctypes.c_int64 * 9)(*[s.stride(0) for t in segs for s in t])
        lens = (ctypes.c_int64 * 3)(*widths)
        pa = (ctypes.c_int * 3)(*[a for a, _ in PAIRS])
        pb = (ctypes.c_int * 3)(*[b for _, b in PAIRS])
        assert fn(ptrs, lds, 3, lens, 3, pa, pb, 4, 3001, out.data_ptr(), 4, -1, -1, None, 0) == 0
        assert torch.equal(out, fast)


SPLITS = [(26122,), (8192, 128, 16384, 128, 1280, 10), (1, 2, 3, 300, 17, 25799),
          (15, 1, 16, 17, 255, 25818), (256, 256, 25610)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("widths", SPLITS, ids=lambda w: f"{len(w)}-segments")
def test_rows_given_in_segments_sum_as_the_whole_rows(native, dtype, widths):
    """A fleet's rows come as segments (one block per parameter): the sums are the bits of the
    whole rows, whatever the split (segments shorter than a lane group, across the float32
    blocks, strided views of a wider buffer), and with the rows split across threads."""
    gen = torch.Generator().manual_seed(3)
    ts = [torch.randn(5, sum(widths), generator=gen, dtype=dtype) for _ in range(3)]
    whole = torch.stack(row_dots(ts, PAIRS))
    strided = [list(t.split(widths, 1)) for t in ts]  # views: row stride = the whole row
    blocks = [[s.contiguous() for s in t] for t in strided]  # a fleet's blocks
    for segs in (strided, blocks):
        assert torch.equal(torch.stack(row_dots(segs, PAIRS)), whole)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        big = [torch.randn(41, sum(widths), generator=gen, dtype=dtype) for _ in range(3)]
        assert 41 * sum(widths) * 3 >= _native.SPLIT_FROM  # split across the threads
        ref = torch.stack(row_dots(big, PAIRS))
        split = [[s.contiguous() for s in t.split(widths, 1)] for t in big]
        assert torch.equal(torch.stack(row_dots(split, PAIRS)), ref)
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("why, make", [
    ("splits differ", lambda t: [list(t.split([3, 5], 1)), list(t.split([4, 4], 1))]),
    ("a whole tensor among segments", lambda t: [list(t.split([3, 5], 1)), t]),
    ("segments among whole tensors", lambda t: [t, list(t.split([3, 5], 1))]),
    ("rows differ", lambda t: [[t[:, :3], t[:1, 3:]], [t[:, :3], t[:1, 3:]]]),
    ("no segments", lambda t: [[], []]),
])
def test_segments_the_native_sums_leave_to_torch(native, why, make):
    assert _native.row_sums(make(torch.ones(2, 8)), ((0, 1),)) is None, why


def test_segments_with_torchs_sums_are_the_whole_rows_bits(monkeypatch):
    """Without the native sums, rows in segments are concatenated and summed by torch: the
    bits of the whole rows (``SHIFTSIM_NATIVE=0`` keeps torch's numbers)."""
    monkeypatch.setenv(_native.ENV, "0")
    _native._reset()
    try:
        gen = torch.Generator().manual_seed(4)
        ts = [torch.randn(3, 999, generator=gen) for _ in range(3)]
        segs = [[s.contiguous() for s in t.split([100, 1, 898], 1)] for t in ts]
        for (a, b), got in zip(PAIRS, row_dots(segs, PAIRS)):
            assert torch.equal(got, row_dot(ts[a], ts[b]))
    finally:
        monkeypatch.undo()
        _native._reset()


def test_segments_off_the_cpu_are_summed_segment_by_segment(monkeypatch):
    """Off the CPU (a GPU fleet) rows in segments are not concatenated (no copies a step): the
    sums add the segments' sums (here on the meta device, with torch.cat forbidden)."""
    def no_cat(*args, **kwargs):
        raise AssertionError("concatenated")
    segs = [[torch.ones(3, 4, device="meta"), torch.ones(3, 5, device="meta")]] * 2
    monkeypatch.setattr(torch, "cat", no_cat)
    (s,) = row_dots(segs, ((0, 1),))
    assert s.shape == (3,) and s.device.type == "meta"
    monkeypatch.undo()
    from shiftsim.optim._kernels import _segment_sum
    a, b = torch.randn(3, 9, dtype=torch.float64), torch.randn(3, 9, dtype=torch.float64)
    got = _segment_sum(list(a.split([4, 5], 1)), list(b.split([4, 5], 1)))
    torch.testing.assert_close(got, (a * b).sum(1))


def test_nan_and_inf_propagate(native):
    a = torch.ones(3, 40)
    a[0, 5], a[1, 39] = float("nan"), float("inf")
    aa, = row_dots([a], ((0, 0),))
    assert aa[0].isnan() and aa[1].isinf() and aa[2] == 40.0


@pytest.mark.parametrize("why, make", [
    ("bfloat16", lambda: [torch.ones(2, 8, dtype=torch.bfloat16)] * 2),
    ("3-d", lambda: [torch.ones(2, 2, 4)] * 2),
    ("strided rows", lambda: [torch.ones(2, 16)[:, ::2]] * 2),
    ("shapes differ", lambda: [torch.ones(2, 8), torch.ones(3, 8)]),
    ("dtypes differ", lambda: [torch.ones(2, 8), torch.ones(2, 8, dtype=torch.float64)]),
])
def test_inputs_the_native_sums_leave_to_torch(native, why, make):
    ts = make()
    assert _native.row_sums(ts, ((0, 1),)) is None, why
    if why not in ("shapes differ", "dtypes differ"):  # row_dots falls back to torch's sums
        (s,) = row_dots(ts, ((0, 1),))
        assert torch.equal(s, row_dot(ts[0], ts[1]))


def test_too_many_pairs_and_bad_indices(native):
    t = torch.ones(2, 4)
    assert _native.row_sums([t], ((0, 0),) * (_native.MAX_PAIRS + 1)) is None
    with pytest.raises(IndexError, match=r"outside 0\.\.1"):
        _native.row_sums([t, t], ((0, 2),))
    _native.row_sums([t, t, t], ((0, 2),))  # cached pairs: still checked against the count
    with pytest.raises(IndexError, match=r"outside 0\.\.0"):
        _native.row_sums([t], ((0, 2),))


def test_inputs_it_cannot_sum_do_not_build_it(fresh, monkeypatch):
    """A fleet on a GPU (or in bfloat16) never asks for the library: no build, no warning
    where there is no compiler, and the record says ``unused``."""
    monkeypatch.setattr(_native, "_compiler", lambda: None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (s,) = row_dots([torch.ones(2, 8, dtype=torch.bfloat16)] * 2, ((0, 1),))
    assert s.tolist() == [8.0, 8.0] and _native.current() == "unused"


def test_off_means_torchs_sums_bit_for_bit(monkeypatch):
    monkeypatch.setenv(_native.ENV, "0")
    _native._reset()
    try:
        gen = torch.Generator().manual_seed(3)
        ts = [torch.randn(5, 1000, generator=gen) for _ in range(3)]
        assert _native.status() == "off" and _native.row_sums(ts, PAIRS) is None
        for s, (a, b) in zip(row_dots(ts, PAIRS), PAIRS):
            assert torch.equal(s, row_dot(ts[a], ts[b]))
    finally:
        monkeypatch.undo()
        _native._reset()


def test_no_compiler_warns_once_and_uses_torch(fresh, monkeypatch):
    monkeypatch.setattr(_native, "_compiler", lambda: None)
    t = torch.ones(2, 8)
    with pytest.warns(RuntimeWarning, match="no C compiler"):
        (s,) = row_dots([t], ((0, 0),))
    assert s.tolist() == [8.0, 8.0]
    assert _native.status().startswith("unavailable: no C compiler")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        row_dots([t], ((0, 0),))  # decided: no second warning


def test_a_failing_compiler_warns_and_leaves_no_file(fresh, monkeypatch, tmp_path):
    broken = tmp_path / "broken-cc"
    broken.write_text("#!/bin/sh\n[ \"$1\" = --version ] && echo broken 1.0 && exit 0\n"
                      "echo 'fatal error: no way' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CC", str(broken))
    with pytest.warns(RuntimeWarning, match="could not build rowsums.c, rowmath.c, "
                                             "tensorsteps.c: fatal error: no way"):
        assert not _native.available()
    assert not fresh.exists() or not any(fresh.iterdir())


def test_a_damaged_cached_library_is_built_again(fresh):
    """A cached file that does not load (a truncated copy, say) is built again, silently.
    (A path this process has not loaded: the loader would hand back a loaded library by
    its name without reading the file.)"""
    cc = _native._compiler()
    if cc is None:
        pytest.skip("no C compiler")
    path, _ = _native._path(cc)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a library")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _native.available()
    assert path.read_bytes()[:4] == b"\x7fELF"


def test_a_cache_folder_that_cannot_be_written_builds_in_the_temporary_folder(
        fresh, monkeypatch, tmp_path):
    if _native._compiler() is None:
        pytest.skip("no C compiler")
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("x")
    monkeypatch.setenv("SHIFTSIM_CACHE", str(blocked / "cache"))  # mkdir fails
    monkeypatch.setattr(_native.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _native.available()
    assert len(list((tmp_path / "tmp").glob("shiftsim-*/rowsums-*.so"))) == 1


def test_a_bad_setting_warns_and_keeps_the_default(fresh, monkeypatch):
    monkeypatch.setenv(_native.ENV, "maybe")
    with pytest.warns(UserWarning, match="SHIFTSIM_NATIVE='maybe' is not one of 0/1"):
        _native.status()


def test_a_run_records_which_sums_it_used(native, tiny_scenario):
    """A fleet of TAM and MoMo members equals each member's run alone bit for bit with the
    native sums, and the runs' records say they used them."""
    model = ss.models.mlp(hidden=(16,))
    members = [(ss.optim.spec("tam"), 0), (ss.optim.spec("momo"), 1),
               (ss.optim.spec("adamem_sgd"), 2), (ss.optim.spec("adatam"), 3)]
    fleet = ss.fleet.run_fleet(tiny_scenario, model, members)
    for (spec, seed), res in zip(members, fleet):
        alone = ss.run(tiny_scenario, model, spec, seed=seed)
        assert res.info["determinism"]["row_sums"] == "native"
        assert alone.trace["loss"].equals(res.trace["loss"])


def test_cache_folder_settings(monkeypatch, tmp_path):
    monkeypatch.setenv("SHIFTSIM_CACHE", str(tmp_path / "a"))
    assert _native.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("SHIFTSIM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert _native.cache_dir() == tmp_path / "x" / "shiftsim"



def test_the_layout_of_the_same_tensors_is_measured_once(native):
    """A second call on the same tensors reuses the first one's layout (pointers and
    strides); new tensors, or a tensor whose storage was replaced, are measured again, and the
    sums follow them."""
    gen = torch.Generator().manual_seed(5)
    a, b = (list(torch.randn(3, 40, generator=gen).split([15, 25], 1)) for _ in range(2))
    first = _native._layout((a, b))
    assert first is not None and _native._layout((a, b)) is first
    c = [t.clone() for t in a]
    assert _native._layout((c, b)) is not first
    a[1].data = torch.randn(3, 25, generator=gen)  # the same tensor object, new storage
    again = _native._layout((a, b))
    assert again is not first and again.ptrs[1] == a[1].data_ptr()
    whole_a, whole_b = torch.cat(a, 1), torch.cat(b, 1)
    got = _native.row_sums((a, b), ((0, 1),))[0]
    assert torch.equal(got, _native.row_sums((whole_a, whole_b), ((0, 1),))[0])


def test_layouts_of_dead_tensors_are_not_reused(native):
    """Tensors that died may leave their ids to new ones: a kept layout is only reused for the
    tensor objects it was made for (weak references), so the sums of new tensors are theirs."""
    import gc

    for i in range(20):
        gen = torch.Generator().manual_seed(i)
        ts = [torch.randn(2, 10 + i % 3, generator=gen) for _ in range(2)]
        want = (ts[0].double() * ts[1].double()).sum(1)
        got = _native.row_sums(ts, ((0, 1),))[0]
        assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-5)
        del ts
        gc.collect()


def test_a_runs_time_per_step_leaves_out_the_one_off_build(tmp_path):
    """The first use on a machine compiles the C library (seconds): that is not the learner's
    time per step, so a run's loop time leaves it out."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import shiftsim as ss
        from shiftsim.optim import _native
        sc = ss.label_flip_tasks(ss.data.digits(), 1.0, tasks=2, steps_per_task=40)
        r = ss.run(sc, ss.models.mlp(hidden=(8,)), "tam", threads=1)
        print(_native.setup_seconds(), r.timings["loop_s"], r.timings["ms_per_step"],
              _native.status())
    """)
    env = {**os.environ, "SHIFTSIM_CACHE": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=300, check=True).stdout.split()
    built, loop_s, ms = float(out[0]), float(out[1]), float(out[2])
    if out[3] != "native":
        pytest.skip(f"no native library here: {out[3]}")
    assert built > loop_s  # the build (a fresh cache) took longer than the whole loop
    assert ms == pytest.approx(1000 * loop_s / 80)
