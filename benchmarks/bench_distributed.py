"""Benchmark: calibration across 1 and 2 processes (torch.distributed, gloo, loopback).

Cases (each rank calibrates on its contiguous share of the batches, ``shard_batches``):

* ``minilm_auto``: MiniLM-L6, ``w8a8-static`` with every activation ranged by the ``auto``
  observer (histograms, the heaviest to update and to reduce); ``--minilm-batches`` batches
  of 8 pydoc sentences, up to 128 tokens.
* ``smollm2_static``: SmolLM2-135M, ``w8a8-static`` with ``percentile`` activation ranges;
  ``--llm-batches`` sequences of ``--llm-len`` tokens (``--llm-blocks N`` keeps only the
  first N of the 30 decoder blocks, to fit a run on a busy machine).
* ``smollm2_gptq``: SmolLM2-135M, ``w4a16-g64`` + GPTQ block by block (Hessians all-reduced,
  each layer quantized by one rank and broadcast); same sequences.

Configurations: one process on 1 thread (``1p x 1t``), one process on 2 threads (``1p x 2t``,
the same cores as two ranks) and two ranks on 1 thread each (``2p x 1t``).  Every run is a
fresh process (``nice -n 5``); timed is ``lowbit.quantize_model(..., convert=False)`` (prepare,
calibration, the reduction across ranks, the algorithms), not the model loading.  Per rank:
wall time, process CPU time, time spent reducing observers, RSS before calibration and
peak RSS during it (``VmHWM`` after resetting it through ``/proc/self/clear_refs`` just
before calibrating; the JSON says when the reset was refused and the mark includes loading).  Each
2-process result is compared with the 1-process one (activation qparams bit-exact; GPTQ
weights: the share of integer codes that differ, since reordered sums move scales by ulps).

Writes ``benchmarks/results/distributed.json`` and ``distributed.md``.

    nice -n 5 python benchmarks/bench_distributed.py --configs 1px1t,2px1t --minilm-batches 32 \
        --cases minilm_auto,smollm2_static
    nice -n 5 python benchmarks/bench_distributed.py --cases smollm2_gptq --llm-blocks 6 \
        --configs 1px1t,2px1t --out benchmarks/results/distributed_gptq
    nice -n 5 python benchmarks/bench_distributed.py --cases smollm2_gptq --llm-blocks 6 \
        --configs 1px1t,2px1t --gptq-hessian float64 --out benchmarks/results/distributed_gptq_f64
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CASES = ("minilm_auto", "smollm2_static", "smollm2_gptq")
CONFIGS = (("1p x 1t", 1, 1), ("2p x 1t", 2, 1), ("1p x 2t", 1, 2))

sys.path.insert(0, str(HERE))
from bench_llm import cpu_model  # noqa: E402  (lscpu model, flags, load)


def _rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (Linux ``clear_refs`` 5); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_kb() -> int:
    """The process's peak RSS since the last reset (``VmHWM``), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _load(case: str, args) -> tuple:
    """``(model, recipe, batches, algorithms)`` of one case."""
    import lowbit
    from lowbit.cli.flags import with_calib_method

    if case == "minilm_auto":
        from lowbit.zoo.minilm import load_minilm, pydoc_sentences, tokenize_batches

        model, tokenizer = load_minilm()
        batches = tokenize_batches(tokenizer, pydoc_sentences(8 * args.minilm_batches),
                                   batch_size=8, max_length=128)
        return model, with_calib_method(lowbit.preset("w8a8-static"), "auto"), batches, None
    from lowbit.zoo.smollm2 import calibration_batches, load_smollm2

    model, tokenizer = load_smollm2()
    if args.llm_blocks < len(model.model.layers):  # a shorter stack: the first N blocks
        model.model.layers = model.model.layers[:args.llm_blocks]
        model.config.num_hidden_layers = args.llm_blocks
    batches = calibration_batches(tokenizer, n=args.llm_batches, seq_len=args.llm_len)
    if case == "smollm2_static":
        recipe = with_calib_method(lowbit.preset("w8a8-static"), "percentile:99.99")
        return model, recipe, batches, None
    return model, "w4a16-g64", batches, [lowbit.GPTQ(hessian_dtype=args.gptq_hessian)]


def worker(args) -> None:
    """One rank (or the single process): load, calibrate its share, write its measurements."""
    import torch.distributed as dist

    torch.set_num_threads(args.threads)
    import lowbit
    import lowbit.distributed.observers as dobs
    from lowbit.distributed import init_from_env, rank, shard_batches, shutdown

    created = init_from_env("cpu")
    model, recipe, batches, algos = _load(args.case, args)
    mine = shard_batches(batches)
    reduce_seconds = [0.0]
    original = dobs.reduce_observers

    def timed_reduce(observers):
        t = time.perf_counter()
        try:
            return original(observers)
        finally:
            reduce_seconds[0] += time.perf_counter() - t

    dobs.reduce_observers = timed_reduce
    rss_before = _rss_kb()
    reset = _reset_peak()  # peak RSS of the calibration itself, not of loading the model
    if created:
        dist.barrier()  # start together
    wall, cpu = time.perf_counter(), time.process_time()
    fake, records = lowbit.quantize_model(model, recipe, mine, convert=False, algorithms=algos)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    ratios = [r.metrics["gptq_output_mse"] / r.metrics["rtn_output_mse"] for r in records
              if r.metrics.get("rtn_output_mse")]
    out = {"rank": rank(), "batches": len(mine), "wall_s": wall, "cpu_s": cpu,
           "reduce_s": reduce_seconds[0], "rss_before_mb": rss_before / 1024,
           "peak_rss_mb": _peak_kb() / 1024, "peak_since_calibration_start": reset,
           "loadavg": list(os.getloadavg()),
           "gptq_vs_rtn_output_mse_mean": sum(ratios) / len(ratios) if ratios else None}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if rank() == 0:
        from safetensors.torch import save_file

        keep = {k: v.detach().contiguous() for k, v in fake.state_dict().items()
                if k.endswith(("act_quantizer.scale", "act_quantizer.zero_point"))
                or (algos and ".layers." in k and "norm" not in k and k.endswith(
                    (".weight", "weight_quantizer.scale", "weight_quantizer.zero_point",
                     "weight_quantizer.block_size")))}
        save_file(keep, str(Path(args.out) / "model.safetensors"))
    (Path(args.out) / f"rank{rank()}.json").write_text(json.dumps(out))
    if created:
        shutdown()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_config(case: str, procs: int, threads: int, args, folder: Path) -> list[dict]:
    port = _free_port()
    cmd = ["nice", "-n", "5", sys.executable, __file__, "--worker", "--case", case,
           "--threads", str(threads), "--out", str(folder),
           "--minilm-batches", str(args.minilm_batches), "--llm-batches", str(args.llm_batches),
           "--llm-len", str(args.llm_len), "--llm-blocks", str(args.llm_blocks),
           "--gptq-hessian", args.gptq_hessian]
    running = []
    for r in range(procs):
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                   OMP_NUM_THREADS=str(threads), GLOO_SOCKET_IFNAME="lo")
        if procs > 1:
            env.update(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(procs),
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        running.append(subprocess.Popen(cmd, env=env))
    for p in running:
        if p.wait() != 0:
            raise SystemExit(f"{case} {procs}p x {threads}t failed")
    return [json.loads((folder / f"rank{r}.json").read_text()) for r in range(procs)]


def compare(one: Path, two: Path) -> dict:
    """How the 2-process model differs from the 1-process one."""
    from safetensors.torch import load_file

    a, b = load_file(str(one / "model.safetensors")), load_file(str(two / "model.safetensors"))
    act = [k for k in a if "act_quantizer" in k]
    weights = [k for k in a if k.endswith(".weight")]
    out = {"act_qparams": len(act),
           "act_qparams_bit_exact": all(torch.equal(a[k], b[k]) for k in act)}
    if weights:  # GPTQ: the weights are (q - z)·s; compare the codes q and the values
        import lowbit

        codes_differ = far = total = 0
        for k in weights:
            qp = {}
            for run, t in (("one", a), ("two", b)):
                p = k[:-len("weight")] + "weight_quantizer."
                qp[run] = lowbit.QParams(t[p + "scale"], t[p + "zero_point"], lowbit.int4,
                                         tuple(int(n) for n in t[p + "block_size"]))
            q1, q2 = lowbit.quantize(a[k], qp["one"]), lowbit.quantize(b[k], qp["two"])
            codes_differ += int((q1 != q2).sum())
            far += int(((q1.int() - q2.int()).abs() > 1).sum())
            total += a[k].numel()
        out.update(gptq_weights=total, gptq_codes_differing=codes_differ,
                   gptq_codes_differing_pct=100.0 * codes_differ / total,
                   gptq_codes_off_by_more_than_1_pct=100.0 * far / total,
                   gptq_weights_bit_exact=all(torch.equal(a[k], b[k]) for k in weights))
    return out


def _same(match: dict) -> str:
    text = "ranges bit-exact" if match["act_qparams_bit_exact"] else "ranges differ"
    if "gptq_weights" in match:
        text += (f"; GPTQ codes differ in {match['gptq_codes_differing_pct']:.2f} % of "
                 f"{match['gptq_weights']} weights (by more than one step in "
                 f"{match['gptq_codes_off_by_more_than_1_pct']:.2f} %)")
    return text if match["act_qparams"] or "gptq_weights" in match else "—"


def _quality(one: dict, two: dict) -> str:
    a, b = one.get("gptq_vs_rtn_output_mse_mean"), two.get("gptq_vs_rtn_output_mse_mean")
    if a is None or b is None:
        return ""
    return f"; GPTQ/RTN layer output MSE, mean: {a:.4f} (1p), {b:.4f} (2p)"


def summary(result: dict) -> str:
    """One row per case: 1 process on 1 thread against 2 processes on 1 thread each."""
    rows = ["| case | 1 process: wall s (CPU s) | 2 processes: wall s, slowest rank (CPU s, "
            "both) | wall 2p/1p | peak RSS per rank 2p/1p | 2 processes vs 1 |",
            "|---|---|---|---|---|---|"]
    for case, runs in result["cases"].items():
        one, two = runs["runs"]["1p x 1t"][0], runs["runs"]["2p x 1t"]
        rows.append(f"| {case} | {one['wall_s']:.1f} ({one['cpu_s']:.1f}) | "
                    f"{max(r['wall_s'] for r in two):.1f} ({sum(r['cpu_s'] for r in two):.1f}) | "
                    f"{runs['ratios']['wall 2p/1px1t']:.2f} | "
                    f"{runs['ratios']['peak RSS per rank 2p/1px1t']:.2f} | {_same(runs['match'])}"
                    f"{_quality(one, two[0])} |")
    return "\n".join(rows)


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = ["# Calibration across processes (torch.distributed, gloo)", "",
             f"CPU: {m['cpu']} ({m['cpu_count']} cores, shared), flags {' '.join(m['flags'])}; "
             f"torch {m['torch']}; load average (1, 5, 15 min) at start "
             f"{[round(x, 1) for x in m['loadavg_1_5_15']]}, at the end "
             f"{[round(x, 1) for x in m.get('loadavg_end', [])]}.", "",
             f"Settings: {json.dumps(result['settings'])}.", "",
             "Per rank: wall and CPU seconds of `quantize_model` (prepare, calibration, "
             "reduction, algorithms), seconds spent reducing observers, RSS before "
             "calibration and peak RSS during it (MB). Ratios: 2 processes against each 1-process "
             "baseline (wall: slowest rank; memory: the larger rank).", "",
             summary(result), ""]
    for case, runs in result["cases"].items():
        lines += [f"## {case}", "", "| config | rank | batches | wall s | CPU s | reduce s | "
                  "RSS before MB | peak RSS MB | load 1 min |", "|---|---|---|---|---|---|---|---|---|"]
        for config, ranks in runs["runs"].items():
            for r in ranks:
                lines.append(f"| {config} | {r['rank']} | {r['batches']} | {r['wall_s']:.1f} | "
                             f"{r['cpu_s']:.1f} | {r['reduce_s']:.3f} | {r['rss_before_mb']:.0f} | "
                             f"{r['peak_rss_mb']:.0f} | {r['loadavg'][0]:.1f} |")
        ratios = runs["ratios"]
        lines += ["", ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()) + ".",
                  f"2 processes vs 1: {json.dumps(runs['match'])}.", ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--minilm-batches", type=int, default=8)
    parser.add_argument("--llm-batches", type=int, default=8)
    parser.add_argument("--llm-len", type=int, default=128)
    parser.add_argument("--gptq-hessian", default="float32", choices=("float32", "float64"),
                        help="GPTQ's Hessian dtype (float64: reordered sums move less)")
    parser.add_argument("--llm-blocks", type=int, default=30,
                        help="keep only the first N of SmolLM2's 30 decoder blocks")
    parser.add_argument("--configs", default="1px1t,2px1t,1px2t",
                        help="which of 1px1t, 2px1t, 1px2t to run (1px1t and 2px1t needed)")
    parser.add_argument("--out", default=str(RESULTS / "distributed"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--render", action="store_true",
                        help="rewrite OUT.md from OUT.json (no measuring)")
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.render:
        out = Path(args.out)
        out.with_suffix(".md").write_text(markdown(json.loads(out.with_suffix(".json").read_text())))
        return None
    result = {"machine": cpu_model(), "settings": {"minilm_batches": args.minilm_batches,
                                                   "llm_batches": args.llm_batches,
                                                   "llm_len": args.llm_len,
                                                   "llm_blocks": args.llm_blocks,
                                                   "gptq_hessian": args.gptq_hessian},
              "cases": {}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    configs = [c for c in CONFIGS if c[0].replace(" ", "") in args.configs.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases.split(","):
            runs, folders = {}, {}
            for name, procs, threads in configs:
                folders[name] = Path(tmp) / case / name.replace(" ", "")
                runs[name] = run_config(case, procs, threads, args, folders[name])
                print(case, name, runs[name], flush=True)
            two, ratios = runs["2p x 1t"], {}
            for base in [c[0] for c in configs if c[1] == 1]:
                ratios[f"wall 2p/{base.replace(' ', '')}"] = \
                    max(r["wall_s"] for r in two) / runs[base][0]["wall_s"]
                ratios[f"peak RSS per rank 2p/{base.replace(' ', '')}"] = \
                    max(r["peak_rss_mb"] for r in two) / runs[base][0]["peak_rss_mb"]
            ratios["CPU total 2p/1px1t"] = sum(r["cpu_s"] for r in two) / runs["1p x 1t"][0]["cpu_s"]
            result["cases"][case] = {"runs": runs, "ratios": ratios,
                                     "match": compare(folders["1p x 1t"], folders["2p x 1t"])}
            result["machine"]["loadavg_end"] = list(os.getloadavg())
            out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
            out.with_suffix(".md").write_text(markdown(result))  # after every case
    print(markdown(result))


if __name__ == "__main__":
    main()
