"""Web app benchmarks: event latency and UI overhead.

Event latency: how long from the engine writing a step event to the run store until the
step number shows in an open page. A stand-in engine (this process) records step events
for a run at irregular intervals, like a worker would, and notes the wall time just
before each write; a MutationObserver in the page notes the wall time each new step
number lands in the DOM. Both clocks are this machine's. Goal: p95 <= 1 s.

UI overhead: tokens/s of a run (a tiny model, or `--model`) started from the Train page with the page open
and watching, divided by tokens/s of the same run started headless (the launcher, no page
open). Runs alternate (headless, UI, headless, UI, ...) so a change in machine load hits
both alike; the ratio of medians is reported. Goal: >= 0.98.

    python bench/ui_latency.py                 # 80 latency samples, 2 rounds of runs
    python bench/ui_latency.py --quick         # 20 samples, 1 round
    python bench/ui_latency.py --model smollm2-135m --steps 16   # the built-in model
    python bench/ui_latency.py --watch none    # start from the page, then leave it
    python bench/ui_latency.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.browser.harness import CHROMIUM, CHROMIUM_ARGS, start_server, stop_server, stop_workers  # noqa: E402

OBSERVER_JS = """() => {
  window.__seen = {};
  const read = () => {
    const el = document.querySelector('[data-testid=step]');
    const step = el ? Number(el.innerText) : NaN;
    if (!Number.isNaN(step) && !(step in window.__seen)) window.__seen[step] = Date.now();
  };
  new MutationObserver(read).observe(document.body, {subtree: true, childList: true, characterData: true});
  read();
}"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def measure_latency(page, server, samples: int) -> dict:
    from backpropagate_core.runs import events as ev
    from backpropagate_core.runs.store import RunStore

    store = RunStore(server.home)
    run = store.create_run(config={"model": "stand-in"}, model="stand-in", dataset="bench", name="latency")
    store.claim(run.id)  # this process plays the worker, so the reaper leaves the run alone
    store.record(ev.RunStarted(run.id, config={"model": "stand-in"}, total_steps=samples))
    page.goto(f"/runs/{run.id}")
    page.get_by_test_id("run-status").filter(has_text="running").wait_for()
    page.evaluate(OBSERVER_JS)
    written: dict[int, float] = {}
    rng = random.Random(0)
    for step in range(1, samples + 1):
        time.sleep(rng.uniform(0.2, 0.6))  # irregular, so writes do not lock to the poll phase
        written[step] = time.time()
        store.record(ev.Step(run.id, step=step, total=samples, loss=2.0 - step / samples, lr=1e-4))
    page.wait_for_function(f"() => {samples} in window.__seen", timeout=30_000)
    seen = page.evaluate("() => window.__seen")
    store.record(ev.Finished(run.id, final_loss=1.0, steps=samples))
    # A page shows the newest step; steps written within one poll share one update, so
    # only the steps the page actually displayed count.
    latencies = [seen[str(s)] / 1000 - written[s] for s in written if str(s) in seen]
    return {"samples": len(latencies), "written": samples,
            "p50_s": round(percentile(latencies, 50), 3), "p95_s": round(percentile(latencies, 95), 3),
            "max_s": round(max(latencies), 3)}


class CpuMeter:
    """CPU seconds per second used by the UI side: the server's process tree without the
    training workers it launched, and this process's chromium processes. Per-process
    deltas, so processes that come or go do not skew it."""

    def __init__(self, server) -> None:
        import psutil

        self.psutil = psutil
        self.server = psutil.Process(server.proc.pid)

    def _is_worker(self, proc) -> bool:
        """Training workers the server launched are its children too; they are the work
        being measured, not the UI."""
        try:
            chain = [proc, *proc.parents()]
            return any("backpropagate_core.runs.worker" in " ".join(p.cmdline()) for p in chain)
        except self.psutil.Error:
            return True

    def _sample(self) -> dict[str, dict[int, float]]:
        me = self.psutil.Process()
        groups = {"server": [p for p in [self.server, *self.server.children(recursive=True)]
                             if not self._is_worker(p)],
                  "chromium": [p for p in me.children(recursive=True) if "chrom" in p.name().lower()]}
        out: dict[str, dict[int, float]] = {}
        for name, procs in groups.items():
            out[name] = {}
            for proc in procs:
                try:
                    times = proc.cpu_times()
                    out[name][proc.pid] = times.user + times.system
                except self.psutil.Error:
                    pass
        return out

    def __enter__(self) -> "CpuMeter":
        self.start, self.start_wall = self._sample(), time.monotonic()
        return self

    def __exit__(self, *exc) -> None:
        end, wall = self._sample(), time.monotonic() - self.start_wall
        self.cores = {name: round(sum(t - self.start[name].get(pid, 0.0) for pid, t in end[name].items()) / wall, 3)
                      for name in end}


def run_headless(server, steps: int) -> tuple[float, float]:
    """(tokens/s, cores the idle UI server used meanwhile) of a run started by the launcher."""
    from backpropagate_core.runs import worker

    with CpuMeter(server) as meter:
        run_id = worker.start_run(str(server.model), str(ROOT / "examples" / "quickstart.jsonl"),
                                  name="headless", overrides={"steps": steps}, home=server.home)
        tokens = wait_tokens_per_s(server, run_id)
    return tokens, meter.cores


def run_from_ui(browser, server, steps: int, watch: bool = True) -> tuple[float, float]:
    """(tokens/s, cores the server and chromium used) of a run started in the page, and
    watched there until it ends (or, with `watch` False, the tab leaves the app once the
    run started: what is left of the overhead is then not the page drawing)."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, base_url=server.url)
    page = context.new_page()
    page.goto("/train")
    if Path(str(server.model)).exists():  # a folder is a custom model; a preset is already selected
        page.get_by_test_id("custom-model").fill(str(server.model))
    # Like a person, read the planned settings first: the plan is its own engine process,
    # and starting while it still runs would bill its CPU time to the training run.
    page.get_by_test_id("reason-learning_rate").filter(has_text="LoRA rate").wait_for(timeout=300_000)
    page.get_by_test_id("field-steps").fill(str(steps))
    page.get_by_test_id("run-name").fill("from-ui")
    with CpuMeter(server) as meter:
        page.get_by_test_id("start").click()
        page.get_by_test_id("run-status").filter(has_text="running").wait_for(timeout=300_000)
        run_id = page.get_by_test_id("run-link").get_attribute("href").rsplit("/", 1)[-1]
        if watch:
            page.get_by_test_id("run-completed").wait_for(timeout=900_000)  # the page watches until the end
        else:
            page.goto("about:blank")
        tokens = wait_tokens_per_s(server, run_id)
    context.close()
    return tokens, meter.cores


def wait_tokens_per_s(server, run_id: str) -> float:
    from backpropagate_core.runs.store import RunStore

    store = RunStore(server.home)
    while store.get(run_id).active:
        time.sleep(0.5)
    run = store.get(run_id)
    if run.status != "completed":
        raise RuntimeError(f"run {run_id[:8]} ended {run.status}: {run.error_code} {run.error_message}")
    finished = store.events(run_id, types=("finished",))[-1][1]
    return float(finished["tokens_per_s"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--samples", type=int, default=80)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--model", default="tiny",
                        help="'tiny' (hidden 128, 4 layers: steps of ~0.05 s, the worst case) or a preset such as "
                             "smollm2-135m (the built-in default: steps of seconds) [tiny]")
    parser.add_argument("--watch", choices=("page", "none"), default="page",
                        help="'page': the Train page watches each run until it ends; 'none': the tab leaves "
                             "once the run started, to tell the page's drawing from the rest [page]")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.samples, args.rounds, args.steps = 20, 1, 10
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

    from playwright.sync_api import sync_playwright

    from tests.tiny import build_model

    root = Path(tempfile.mkdtemp(prefix="bp-ui-bench-"))
    load_before = os.getloadavg()
    server = None
    try:
        model = (build_model(root / "tiny-llama", arch="llama", hidden=128, layers=4) if args.model == "tiny"
                 else args.model)
        print("starting backprop ui …", flush=True)
        server = start_server(root / "server", model)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            context = browser.new_context(viewport={"width": 1400, "height": 1000}, base_url=server.url)
            latency = measure_latency(context.new_page(), server, args.samples)
            context.close()
            print(f"event latency: p50 {latency['p50_s']} s, p95 {latency['p95_s']} s, "
                  f"max {latency['max_s']} s over {latency['samples']} displayed steps", flush=True)
            headless, ui, idle_cores, ui_cores = [], [], [], []
            for r in range(args.rounds):
                tokens, cores = run_headless(server, args.steps)
                headless.append(tokens), idle_cores.append(cores)
                tokens, cores = run_from_ui(browser, server, args.steps, watch=args.watch == "page")
                ui.append(tokens), ui_cores.append(cores)
                print(f"round {r + 1}: headless {headless[-1]:.0f} tok/s (UI side idle: {idle_cores[-1]} cores), "
                      f"UI {ui[-1]:.0f} tok/s (UI side watching: {ui_cores[-1]} cores)", flush=True)
            browser.close()
        ratio = statistics.median(ui) / statistics.median(headless)
        result = {"latency": latency, "tokens_per_s": {"headless": headless, "ui": ui},
                  "overhead_ratio": round(ratio, 3), "ui_cores": ui_cores, "idle_server_cores": idle_cores,
                  "steps_per_run": args.steps, "model": args.model, "watch": args.watch, "loadavg_before": load_before,
                  "loadavg_after": os.getloadavg(), "cpus": os.cpu_count()}
        print(f"UI overhead ratio (UI / headless tokens/s, medians): {ratio:.3f}")
        for name in ("server", "chromium"):
            print(f"{name} while watching: {statistics.median(c[name] for c in ui_cores):.3f} of "
                  f"{os.cpu_count()} cores (idle: {statistics.median(c[name] for c in idle_cores):.3f})")
        print(f"load average before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
        return 0
    finally:
        if server is not None:
            stop_workers(server.home)
            stop_server(server.proc)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
