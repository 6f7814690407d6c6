"""The table of benches/cpu-step.sh, from the logs of its runs (standard library only).

    summarize.py LOG_DIR NAME [NAME ...] [--results FILE.md] [--binary PATH]
    summarize.py --run LOG.jsonl      (one run's median, for the progress lines)

For each config NAME, LOG_DIR holds, per round R:
  NAME-ours-R.jsonl   our metrics.jsonl (one line per step: elapsed_s, peak_heap_mib, …)
  NAME-torch-R.jsonl  step.py's output (one line per step with step_s, then a summary line)
  NAME-ours-R.time, NAME-torch-R.time   "wall user sys maxrss_kib" of the process
and NAME-checkpoint.txt, check_parity.py's check of our checkpoint against the torch model.

Step times: ours are the differences of consecutive `elapsed_s` (divided by the steps between
the lines), torch's are `step_s`; the first step of every run is warmup and left out. The
medians are over every remaining step of every round.
"""

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_time(path):
    """(wall, user, sys, max RSS MiB) from a `time -f '%e %U %S %M'` file."""
    wall, user, system, rss_kib = path.read_text().split("\n")[-2].split()
    return float(wall), float(user), float(system), float(rss_kib) / 1024


def our_step_times(lines):
    """Per-step seconds from the metrics log, the first step left out."""
    times = []
    for before, after in zip(lines, lines[1:]):
        steps = after["step"] - before["step"]
        times += [(after["elapsed_s"] - before["elapsed_s"]) / steps] * steps
    return times


def spread(times):
    return f"{statistics.median(times):.3f} ({min(times):.3f}–{max(times):.3f})"


def summarize(log_dir, name):
    rounds = sorted(int(p.stem.rsplit("-", 1)[1]) for p in log_dir.glob(f"{name}-ours-*.jsonl"))
    ours, torch_steps, ours_heap, ours_proc, torch_proc, summaries = [], [], [], [], [], []
    for r in rounds:
        lines = read_jsonl(log_dir / f"{name}-ours-{r}.jsonl")
        ours += our_step_times(lines)
        ours_heap.append(lines[-1].get("peak_heap_mib") or float("nan"))
        ours_proc.append(read_time(log_dir / f"{name}-ours-{r}.time"))
        out = read_jsonl(log_dir / f"{name}-torch-{r}.jsonl")
        torch_steps += [line["step_s"] for line in out if "step_s" in line][1:]
        summaries.append(next(line for line in out if line.get("summary")))
        torch_proc.append(read_time(log_dir / f"{name}-torch-{r}.time"))
    if not ours or not torch_steps:
        raise SystemExit(f"{name}: no timed steps (STEPS must be at least 2)")
    check = log_dir / f"{name}-checkpoint.txt"
    return {
        "name": name,
        "rounds": len(rounds),
        "params": summaries[0]["params"],
        "ours": ours,
        "torch": torch_steps,
        "ratio": statistics.median(torch_steps) / statistics.median(ours),
        "ours_heap": max(ours_heap),
        "ours_rss": max(p[3] for p in ours_proc),
        # step.py's own getrusage(RUSAGE_SELF): `time`'s figure for it can be higher, as it
        # also takes the largest of its children (importing torch forks helpers).
        "torch_rss": max(s["peak_rss_mib"] for s in summaries),
        "torch_model_rss": max(s["peak_rss_mib"] - s["rss_after_import_mib"] for s in summaries),
        # (wall, user, sys) summed over the rounds
        "ours_proc": [sum(p[i] for p in ours_proc) for i in range(3)],
        "torch_proc": [sum(p[i] for p in torch_proc) for i in range(3)],
        "torch_version": summaries[0]["torch"],
        "adamw": summaries[0]["adamw"],
        "threads": summaries[0]["threads"],
        "batch_size": summaries[0].get("batch_size", "?"),
        "checkpoint_ok": check.exists() and "parity: ok" in check.read_text(),
    }


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def commit():
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return head + (" (modified)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def markdown(results, binary):
    first = results[0]
    steps_per_run = (len(first["ours"]) // first["rounds"]) + 1
    lines = [
        f"CPU training step, batch {first['batch_size']}, f32: ours (`{binary}`, commit {commit()}) vs PyTorch "
        f"{first['torch_version']} eager (benches/torch/step.py, AdamW {first['adamw']}), "
        f"{first['threads']} threads each, on {cpu_name()} ({os.cpu_count()} cores). "
        f"{first['rounds']} round(s) of {steps_per_run} steps per side, interleaved; the first "
        "step of each run left out. Step time: median (min–max) over the remaining steps.",
        "",
        "| config | params | ours s/step | PyTorch s/step | PyTorch / ours | ours peak heap | "
        "ours max RSS | PyTorch max RSS (above import) | ours user / sys / wall s | "
        "PyTorch user / sys / wall s | same model |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ow, ou, os_ = r["ours_proc"]
        tw, tu, ts = r["torch_proc"]
        lines.append(
            f"| {r['name']} | {r['params']:,} | {spread(r['ours'])} | {spread(r['torch'])} | "
            f"{r['ratio']:.2f} | {r['ours_heap']:.0f} MiB | {r['ours_rss']:.0f} MiB | "
            f"{r['torch_rss']:.0f} MiB ({r['torch_model_rss']:.0f}) | "
            f"{ou:.1f} / {os_:.1f} / {ow:.1f} | {tu:.1f} / {ts:.1f} / {tw:.1f} | "
            f"{'yes' if r['checkpoint_ok'] else 'NOT CHECKED / FAILED'} |")
    lines += [
        "",
        "PyTorch / ours > 1: ours is faster. Peak heap: our counting allocator; max RSS: the whole "
        "process (PyTorch's includes ≈ 0.5 GiB of its libraries, the part above what the process "
        "had after `import torch` is in brackets). User / sys / wall: whole processes (start-up, "
        "our final checkpoint write) summed over the rounds. Same model: our checkpoint of the "
        "first round loads strictly into the PyTorch model and gives the same outputs "
        "(check_parity.py --checkpoint).",
    ]
    return "\n".join(lines) + "\n"


def one_run(path):
    """A line on one run's log (ours: a metrics.jsonl; PyTorch: step.py's output)."""
    lines = read_jsonl(path)
    if lines and "elapsed_s" in lines[0]:
        times = our_step_times(lines)
    else:
        times = [line["step_s"] for line in lines if "step_s" in line][1:]
    return f"median {statistics.median(times):.3f} s/step over {len(times)} timed steps"


def main():
    if sys.argv[1:2] == ["--run"]:
        print(one_run(pathlib.Path(sys.argv[2])))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("log_dir", type=pathlib.Path)
    parser.add_argument("names", nargs="+")
    parser.add_argument("--results", help="also write the table (markdown) here")
    parser.add_argument("--binary", default="target/release/ditmoe")
    args = parser.parse_args()
    table = markdown([summarize(args.log_dir, n) for n in args.names], args.binary)
    print(table, end="")
    if args.results:
        pathlib.Path(args.results).write_text(table)


if __name__ == "__main__":
    main()
