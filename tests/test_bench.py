"""Proves the benchmark measures what it says: every implementation gets a row with
throughput, ratios, GFLOP/s against a peak measured in the same run and peak memory;
the FLOP count matches a hand count; the CLI writes valid JSON; what was not measured (memory
under --no-memory) is shown as "-", never "nan", in the bench's table and in the GPU run's summary.

It does not assert speed targets: those are read off `python scripts/bench.py`
(see README, Performance), never asserted in a timed test on a shared machine.
Run: pytest tests/test_bench.py
"""
import dataclasses
import json

import pytest
import torch

from charrnn_torch.files import json_text
from charrnn_torch.tools import bench
from charrnn_torch.model import compiled
from conftest import run_script


def test_flop_count_by_hand():
    # L=1: forward 2*H*H (W_hh) + 2*H*V (W_hy); backward twice that.
    assert bench.flops_per_char(V=65, H=100, L=1) == 3 * (2 * 100 * 100 + 2 * 100 * 65)
    # each layer above the first adds its W_xh (H x H)
    assert bench.flops_per_char(65, 100, 2) - bench.flops_per_char(65, 100, 1) == 3 * 4 * 100 * 100


def test_flop_count_of_gated_cells():
    # G gates multiply every W_xh and W_hh product; the output projection is the same
    assert bench.flops_per_char(65, 100, 2, gates=4) == 3 * (4 * (2 * 100 * 100 * 2 + 2 * 100 * 100) + 2 * 100 * 65)
    assert bench.flops_per_char(65, 100, 1, gates=3) == 3 * (3 * 2 * 100 * 100 + 2 * 100 * 65)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gated_cells_rows_against_their_torch_module(monkeypatch, cell):
    monkeypatch.setitem(bench.SHAPES, "tiny", (11, 16, 3, 7, 2))
    impls = bench.build_impls("tiny", torch.device("cpu"), cell=cell)
    assert set(impls) == {"CharRNN loop", "CharRNN fused", "CharRNN fused_cpp", bench.yardstick_name(cell)}
    assert isinstance(impls[bench.yardstick_name(cell)].model.rnn, getattr(torch.nn, cell.upper()))
    for name, step in impls.items():
        before = [p.detach().clone() for p in step.params]
        step()
        step()  # the second step starts from the carried state ((h, c) for the LSTM)
        assert any(not torch.equal(a, b) for a, b in zip(before, step.params)), name


def test_every_impl_step_trains(monkeypatch):
    monkeypatch.setitem(bench.SHAPES, "tiny", (11, 16, 3, 7, 2))
    impls = bench.build_impls("tiny", torch.device("cpu"))
    assert set(impls) == {"numpy reference", "CharRNN loop", "CharRNN fused", "CharRNN fused_cpp", "nn.RNN stack"}
    for name, step in impls.items():
        if name == "numpy reference":
            before = step.params["W_hy"].copy()
            step()
            assert (step.params["W_hy"] != before).any()
        else:
            before = [p.detach().clone() for p in step.params]
            step()
            assert any(not torch.equal(a, b) for a, b in zip(before, step.params)), name


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_train_step_rows_train_and_match(monkeypatch, cell):
    # --train-steps: on a CPU the "graphed" rows run graphs.py's sync-free step uncaptured. Eager and
    # sync-free start from the same weights and data: after two steps they hold the same weights.
    monkeypatch.setitem(bench.SHAPES, "tiny", (11, 16, 3, 7, 2))
    impls = bench.build_step_impls("tiny", torch.device("cpu"), cell=cell)
    assert list(impls) == bench.step_impl_names(torch.device("cpu"), cell)
    before = {name: [p.detach().clone() for p in step.params] for name, step in impls.items()}
    for step in impls.values():
        step()
        step()
    for name, step in impls.items():
        assert any(not torch.equal(a, b) for a, b in zip(before[name], step.params)), name
    for eager, sync_free in (list(impls)[:2], list(impls)[2:]):
        for a, b in zip(impls[eager].params, impls[sync_free].params):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), (eager, sync_free)


@pytest.mark.slow
def test_run_shape_rows(monkeypatch):
    monkeypatch.setitem(bench.SHAPES, "tiny", (11, 16, 3, 7, 1))
    # Each row's memory is a fresh process of its own (~10 s here): one row measures for real, the
    # others prove that every row asks for its own figure and shows it.
    real, asked = bench.measure_peak_mem, []

    def one_real_measure(shape, name, *args, **kwargs):
        asked.append(name)
        return real(shape, name, *args, **kwargs) if name == "CharRNN fused" else 1000.0 + len(asked)

    monkeypatch.setattr(bench, "measure_peak_mem", one_real_measure)
    rows, peak = bench.run_shape("tiny", torch.device("cpu"), repeats=2)
    assert peak > 0
    assert [r.impl for r in rows] == ["numpy reference", "CharRNN loop", "CharRNN fused", "CharRNN fused_cpp", "nn.RNN stack"]
    assert asked == [r.impl for r in rows]
    for i, r in enumerate(rows):
        assert r.chars_per_sec > 0 and r.gflops > 0
        assert r.pct_peak == pytest.approx(100 * r.gflops / peak)
        if r.impl == "CharRNN fused":
            assert 0 < r.peak_mem_mb < 1000  # a number, not NaN, on Linux
        else:
            assert r.peak_mem_mb == 1001.0 + i
    table = bench.format_table(rows)
    assert "vs nn.RNN" in table and table.count("tiny") == 5


def no_kernel():
    raise RuntimeError("could not create a primitive descriptor for the LSTM forward propagation primitive")


def test_a_torch_module_this_machine_cannot_run_is_a_failed_row(monkeypatch, tmp_path):
    # oneDNN has no bf16 LSTM on a CPU without AVX-512's bf16 instructions: the yardstick fails, the rest is measured
    monkeypatch.setitem(bench.SHAPES, "tiny", (11, 16, 3, 7, 1))
    impls = bench.build_impls("tiny", torch.device("cpu"), torch.float32)
    impls["nn.RNN stack"] = no_kernel
    rows, _ = bench.run_shape("tiny", torch.device("cpu"), repeats=1, memory=False, impls=impls)
    assert [r.impl for r in rows] == ["numpy reference", "CharRNN loop", "CharRNN fused", "CharRNN fused_cpp", "nn.RNN stack"]
    assert all(r.chars_per_sec > 0 for r in rows[:4]) and rows[4].note.startswith("failed: RuntimeError: could not")
    table = bench.format_table(rows)
    assert "failed: RuntimeError" in table and "nan" not in table.lower(), table
    # and the GPU run's summary of them, from bench.json as the bench writes it (no numbers: null)
    (tmp_path / "bench.json").write_text(json_text({"rows": [dataclasses.asdict(r) for r in rows]}))
    summary = run_script("gpu_summary.py", tmp_path).stdout
    assert "- chars/s      -% peak" in summary and "failed: RuntimeError" in summary, summary
    with pytest.raises(RuntimeError, match="primitive descriptor"):  # our own rows' errors are never hidden
        bench.run_shape("tiny", torch.device("cpu"), repeats=1, memory=False, impls={"CharRNN fused": no_kernel})


@pytest.mark.slow
def test_no_memory_is_a_dash_not_nan(monkeypatch, tmp_path):
    monkeypatch.setitem(bench.SHAPES, "tiny", (11, 16, 3, 7, 1))
    rows, _ = bench.run_shape("tiny", torch.device("cpu"), repeats=1, memory=False)
    table = bench.format_table(rows)
    assert "nan" not in table.lower(), table
    numbers = [line[:-len(r.optimizer)] for line, r in zip(table.splitlines()[2:], rows)]  # the step column aside
    widths = {len(line) for line in numbers}
    assert [line.split()[-2] for line in numbers] == ["-"] * 5 and len(widths) == 1, table
    # the GPU run's summary of the same rows (bench.json keeps NaN) prints them the same way
    (tmp_path / "bench.json").write_text(json.dumps({"rows": [vars(r) for r in rows]}))
    (tmp_path / "runs" / "q").mkdir(parents=True)  # a quality run that died before logging a rate
    r = run_script("gpu_summary.py", tmp_path)
    assert "nan" not in r.stdout.lower() and r.stdout.count(" - MB") == 5 and "chars/s=-" in r.stdout, r.stdout


@pytest.mark.slow
def test_cli_json(tmp_path):
    out = tmp_path / "b.json"
    # --no-memory: the memory column's own subprocesses are test_run_shape_rows' to prove
    r = run_script("bench.py", "--shapes", "tutorial", "--repeats", "1", "--no-memory", "--json", out)
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    assert {row["impl"] for row in data["rows"]} == {"numpy reference", "CharRNN loop", "CharRNN fused",
                                                     "CharRNN fused_cpp", "nn.RNN stack"}
    impls = {"fused"} | ({"fused_cpp"} if compiled.module() else set())  # compiled: where it builds
    assert data["peaks"]["tutorial"] > 0 and set(data["sampling"]["tutorial"]) == impls
    assert all(set(rates) == {"1", "64"} for rates in data["sampling"]["tutorial"].values())
    assert data["malloc"] == "retain" and "freed memory retained" in r.stdout
    assert "sampling (tutorial, CharRNN fused)" in r.stdout
    assert ("sampling (tutorial, CharRNN fused_cpp, compiled loop)" in r.stdout) == ("fused_cpp" in impls)
    assert "tutorial: measured fp32 matmul peak" in r.stdout and "; fused's step GEMM: addmm" in r.stdout


def test_cli_rejects_unknown_shape():
    r = run_script("bench.py", "--shapes", "huge")
    assert r.returncode == 2 and r.stderr.startswith("error: unknown shape")


def test_numpy_blas_threads_park_before_the_next_impl(monkeypatch):
    # numpy's BLAS threads spin after its calls and slow whatever is timed next; the bench
    # must wait for them after each numpy timing, and only then.
    monkeypatch.setitem(bench.SHAPES, "tiny", (11, 16, 3, 7, 1))
    events = []
    real_time_steps = bench.time_steps
    monkeypatch.setattr(bench, "time_steps", lambda step, device, n: (
        events.append(type(step).__name__), real_time_steps(step, device, n))[1])
    monkeypatch.setattr(bench.time, "sleep", lambda s: events.append(("sleep", s)))
    bench.run_shape("tiny", torch.device("cpu"), repeats=2, memory=False)  # memory: test_run_shape_rows
    parks = [i for i, e in enumerate(events) if e == ("sleep", bench.NUMPY_BLAS_PARK_S)]
    assert len(parks) == 2 and all(events[i - 1] == "NumpyStep" for i in parks)


@pytest.mark.slow
def test_corpus_bench_json(tmp_path):
    """The corpus benchmark runs end to end on a small generated corpus and reports every row."""
    from conftest import ROOT
    if not (ROOT / "data" / "tinyshakespeare.txt").exists():
        pytest.skip("needs data/tinyshakespeare.txt as the seed text")
    out = tmp_path / "c.json"
    r = run_script("bench.py", "--corpus-mb", "3", "--no-ddp", "--work", tmp_path / "w", "--json", out)
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())
    assert [row["run"] for row in rows] == ["tiny shakespeare, first start", "tiny shakespeare, second start",
                                            "3 MB, first start (builds cache)", "3 MB, second start"]
    assert rows[2]["built_mb"] == 3.0 and rows[2]["build_mb_per_s"] > 0 and rows[3]["built_mb"] is None
    assert all(row["startup_s"] > 0 and row["peak_rss_mb"] > 50 for row in rows)
    assert not list((tmp_path / "w").glob("corpus-*"))  # the generated corpus and its cache are removed


def test_corpus_bench_rejects_bad_sizes():
    r = run_script("bench.py", "--corpus-mb", "100,x")
    assert r.returncode == 2 and r.stderr.startswith("error: --corpus-mb must be an integer")


@pytest.mark.slow
def test_compiled_rows_train_and_report_their_compile_time(monkeypatch):
    # torch.compile of the readable loop (and of the torch module: the same machinery, not timed
    # here): rows of their own, their first steps (the compile) reported apart from the steady rate.
    monkeypatch.setitem(bench.SHAPES, "tiny", (11, 4, 3, 2, 1))
    impls = bench.build_impls("tiny", torch.device("cpu"), compiled_rows=True)
    assert {"CharRNN loop" + bench.COMPILED, "nn.RNN stack" + bench.COMPILED} <= set(impls)
    name = "CharRNN loop" + bench.COMPILED
    before = [p.detach().clone() for p in impls[name].params]
    rows, _ = bench.run_shape("tiny", torch.device("cpu"), repeats=1, memory=False, impls={name: impls[name]})
    assert any(not torch.equal(a, b) for a, b in zip(before, impls[name].params))
    assert rows[0].warmup_s > 0 and rows[0].chars_per_sec > 0
    assert "compiled in" in bench.format_table(rows).splitlines()[2]
