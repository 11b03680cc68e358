"""Orchestration cost: the same points in plain PyTorch, on Ray's own floor, and through run_sweep.

    python benchmarks/overhead.py                    # plain / floor / flops_fit, 3 repeats
    python benchmarks/overhead.py --arms floor,flops_fit --settings chdir,no-state,chdir+no-state

Arms, each training every point for exactly its planned steps:
- plain: the points in plain PyTorch (benchmarks/plain_loop.py) in one process per CPU,
  1 torch thread each, as many at once as the Ray arms train: what the training costs
  when nothing surrounds it. (One process with a torch thread per core is no baseline on a
  shared machine: there its threads wait for each other, and a point takes many times as long.)
- floor: the required shape with nothing of flops_fit in the trial or the worker: one bare
  `tune.Tuner` function trial per point, each building a `ray.train.torch.TorchTrainer`
  with `TuneReportCallback` (Ray's `doc_code/train_tune_interop.py`), whose train function
  creates an `accelerate.Accelerator()`, runs a plain PyTorch loop and reports once at the
  end from every rank. It gets what flops_fit's local Ray gets: the same Ray start and
  environment (ray_setup.ensure_ray: RAY_ENV + LOCAL_RAY_ENV, trial_slot driver resources),
  the same concurrency and `reuse_actors=True`. Model, loss and data are the task's (the
  tiny GPT of flops_fit.models, lm_loss, TextCorpus), as in the plain arm: the arms differ
  in what surrounds training, not in what is trained.
- flops_fit: `flops_fit.run_sweep` with its defaults (1 worker per point, reports, checkpoints).
- flops_fit[SETTING]: run_sweep with a Ray setting of --settings (SETTINGS below) on top.

Each repeat runs every arm once, in an order rotated from repeat to repeat, so background
load falls on all arms alike; each Ray arm starts a fresh local Ray before its clock starts
and shuts it down after. Prints, per arm, the median wall time and its spread, the ratio to
the floor paired repeat by repeat, the per-trial latencies (Tune's trial start -> the
worker's first step, last step -> Tune's trial end) and the CPU seconds per point by kind of
Ray process started by this script (its title: ray::ImplicitFunc is a trial driver,
ray::RayTrainWorker a training worker, ...). Unless --no-write, writes the figures into its
section of benchmarks/RESULTS.md as one table (a column per arm) and the paired ratios,
replacing the last run's and keeping the section's introduction.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import flops_fit as ff  # noqa: E402
from flops_fit import ray_setup  # noqa: E402  (sets RAY_TRAIN_V2_ENABLED before ray.train)
from flops_fit.data import TextCorpus  # noqa: E402
from flops_fit.models import GPT, lm_loss  # noqa: E402
from plain_loop import train_plain  # noqa: E402
from process_sampler import ProcessSampler  # noqa: E402

RESULTS = HERE / "RESULTS.md"
# 4 points of the tiny GPT (aspect 8, 64-token samples, 16-sample batch), 77-790 steps:
# short enough that 3 repeats of the three arms fit in one sitting on a shared 2-core
# machine, and the Ray arms' cost per point is most of their wall time, so it is what the
# ratio to the floor measures.
BUDGETS = [5e10]  # FLOPs
SIZES = [2, 3, 4, 5]
REPEATS = 3  # medians of this many interleaved repeats per arm
# Ray settings tried on top of run_sweep's (names for --settings; "a+b" combines them).
SETTINGS = {
    # Tune's trainable and Train V2's controller skip moving each process into the trial's
    # folder (ray/train/v2/api/data_parallel_trainer.py: WorkingDirectorySetupCallback).
    "chdir": {"RAY_CHDIR_TO_TRIAL_DIR": "0"},
    # Ray's default: no StateManagerCallback, no TrainStateActor; the dashboard's Train runs
    # (/api/train/v2/runs/v1) are then empty.
    "no-state": {"RAY_TRAIN_ENABLE_STATE_TRACKING": "0"},
}
PLAIN, FLOOR, FLOPS_FIT = "plain", "floor", "flops_fit"
SAMPLE_INTERVAL_S = 0.2  # how often the CPU of this script's descendants is read
# Each of the plain arm's processes sleeps this long in its first job, so that every one of
# them is started (and has imported torch) before the clock starts.
POOL_READY_S = 1.0


def make_task(cache_dir):
    return ff.Task(
        model_fn=functools.partial(GPT.from_size, aspect=8, head_dim=8, seq_len=64),
        data=TextCorpus(seq_len=64, cache_dir=cache_dir),
        loss_fn=lm_loss,
        tokens_per_sample=64,
        batch_size=16,
        lr=1e-2,
    )


# --- the floor arm: nothing of flops_fit in the trial or the worker ---------------------------


def floor_worker(config: dict) -> None:
    """Train function of the floor (every worker): Accelerator, plain PyTorch loop, one report."""
    import math

    import numpy as np
    import ray.train
    import torch
    from accelerate import Accelerator
    from torch.utils.data import default_collate

    p, spec = config["point"], config["spec"]
    torch.set_num_threads(spec["threads"])  # the CPUs this worker reserved, as run_sweep's workers
    # A group of one without DistributedDataParallel, as flops_fit's workers train it (Ray's
    # torch backend sets LOCAL_RANK, so Accelerate would wrap the model in DDP, a cost per step;
    # benchmarks/RESULTS.md, "Defaults measured once"): the floor measures Ray, not DDP.
    local_rank = os.environ.pop("LOCAL_RANK", None) if ray.train.get_context().get_world_size() == 1 else None
    try:
        accelerator = Accelerator()
    finally:
        if local_rank is not None:
            os.environ["LOCAL_RANK"] = local_rank
    train_set, val_set = spec["data"]()
    torch.manual_seed(spec["seed"])
    model = spec["model_fn"](p["size"])
    params = [q for q in model.parameters() if q.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": [q for q in params if q.dim() >= 2], "weight_decay": spec["weight_decay"]},
         {"params": [q for q in params if q.dim() < 2], "weight_decay": 0.0}],
        lr=p["lr"], betas=spec["betas"])
    steps, warmup = p["steps"], max(1, round(p["warmup"] * p["steps"])) if p["warmup"] > 0 else 0

    def schedule(s):  # linear warmup, cosine decay to min_lr_fraction (Chinchilla, App. B)
        if s < warmup:
            return (s + 1) / warmup
        cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, (s - warmup) / max(1, steps - warmup))))
        return spec["min_lr_fraction"] + (1.0 - spec["min_lr_fraction"]) * cosine

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    model, optimizer = accelerator.prepare(model, optimizer)
    order = np.random.default_rng(spec["seed"]).permutation(len(train_set))
    batch = spec["batch_size"]
    model.train()
    first_step_at = time.time()
    for step in range(steps):
        x = default_collate([train_set[int(order[i % len(order)])] for i in range(step * batch, (step + 1) * batch)])
        loss = spec["loss_fn"](model, x.to(accelerator.device))
        accelerator.backward(loss)
        if spec["grad_clip"] > 0:
            accelerator.clip_grad_norm_(model.parameters(), spec["grad_clip"])
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    last_step_at = time.time()
    model.eval()
    n, total = min(spec["eval_samples"], len(val_set)), 0.0
    with torch.no_grad():
        for i in range(0, n, batch):
            idx = range(i, min(n, i + batch))
            x = default_collate([val_set[j] for j in idx]).to(accelerator.device)
            total += spec["loss_fn"](model, x).item() * len(idx)
    # Every rank reports: ray.train.report is a barrier (RAY-NOTES, "Tune + Train pattern").
    ray.train.report({"loss": total / n, "first_step_at": first_step_at, "last_step_at": last_step_at,
                      "status": "ok"}, checkpoint=None)


def floor_trial(config: dict, spec: dict, storage: str) -> None:
    """Tune function trial of the floor: one TorchTrainer whose metrics reach Tune."""
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    TorchTrainer(
        floor_worker,
        train_loop_config={"point": config["point"], "spec": spec},
        scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": spec["threads"]}),
        run_config=ray.train.RunConfig(name=config["point"]["point_id"], storage_path=storage,
                                       callbacks=[TuneReportCallback()]),
    ).fit()


def point_id_of(trial) -> str:
    return trial.config["point"]["point_id"]


def run_floor(plan, task, folder: Path, callbacks: list) -> None:
    import ray
    from ray import tune

    threads = 1  # run_sweep's default: {"CPU": 1} per worker, torch threads = CPUs reserved
    spec = {"model_fn": task.model_fn, "data": task.data, "loss_fn": task.loss_fn, "seed": task.seed,
            "batch_size": task.batch_size, "weight_decay": task.weight_decay, "betas": tuple(task.betas),
            "grad_clip": task.grad_clip, "min_lr_fraction": task.min_lr_fraction,
            "eval_samples": task.eval_samples, "threads": threads}
    points = []
    for q in plan:
        hp = task.hyperparameters(q.params, q.tokens, q.flops)
        points.append({"point_id": q.point_id, "size": q.size, "steps": q.steps, "lr": hp["lr"],
                       "warmup": hp["warmup"]})
    trainable = tune.with_resources(
        tune.with_parameters(floor_trial, spec=spec, storage=str(folder / "train")),
        ray_setup.driver_resources())
    tune.Tuner(
        trainable,
        param_space={"point": tune.grid_search(points)},
        tune_config=tune.TuneConfig(
            # as run_sweep's on a local Ray: as many 1-worker groups as the CPUs hold
            max_concurrent_trials=max(1, int(ray.cluster_resources().get("CPU", 0) // threads)),
            trial_name_creator=point_id_of, trial_dirname_creator=point_id_of, reuse_actors=True),
        run_config=tune.RunConfig(name="floor", storage_path=str(folder), callbacks=callbacks, verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=0)),
    ).fit()


# --- measuring ---------------------------------------------------------------------------------


class CpuByProcess(ProcessSampler):
    """Samples the CPU time (user + system, s) of this script's descendants while running (a
    local Ray's processes are: other programs' processes on a shared machine stay out); groups
    them by title: a Ray worker's proctitle names its actor class (`ray::IDLE` until it gets
    one); other processes count under their executable name."""

    def __init__(self, interval_s: float = SAMPLE_INTERVAL_S):
        super().__init__(interval_s)
        self.me = self.psutil.Process(os.getpid())
        self.before = {p.pid: self._cpu(p) for p in self._descendants()}
        self.cpu, self.title = {}, {}

    def _descendants(self):
        try:
            return self.me.children(recursive=True)
        except self.psutil.Error:
            return []

    @staticmethod
    def _cpu(p) -> float:
        try:
            t = p.cpu_times()
            return t.user + t.system + t.children_user + t.children_system
        except Exception:
            return 0.0

    def sample(self) -> None:
        for p in self._descendants():
            try:
                cmd = p.cmdline()
            except Exception:
                continue
            title = cmd[0].split(" ")[0] if cmd and cmd[0].startswith("ray::") else p.name()
            if not title.startswith("ray::IDLE") or p.pid not in self.title:
                self.title[p.pid] = title
            self.cpu[p.pid] = self._cpu(p) - self.before.get(p.pid, 0.0)

    def by_title(self) -> dict:
        """CPU seconds by actor class. A Ray worker's title also names the method it runs
        (`ray::TrainController.run`) and is cut short while it changes (`ray::ImplicitFu`):
        both count under the class."""
        titles = {t.split(".")[0] for t in self.title.values()}
        full = {t: max((u for u in titles if u.startswith(t)), key=len) for t in titles}
        out = defaultdict(float)
        for pid, cpu in self.cpu.items():
            if cpu > 0:
                out[full[self.title[pid].split(".")[0]]] += cpu
        return dict(out)


def make_timeline():
    from ray import tune

    class Timeline(tune.Callback):
        """Tune's trial start and end, and the worker's first and last step, per point."""

        def __init__(self):
            self.start, self.end, self.last = {}, {}, {}

        def on_trial_start(self, iteration, trials, trial, **info):
            self.start[point_id_of(trial)] = time.time()

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.end[point_id_of(trial)] = time.time()
            self.last[point_id_of(trial)] = dict(trial.last_result or {})

        def on_trial_error(self, iteration, trials, trial, **info):
            self.end[point_id_of(trial)] = time.time()
            self.last[point_id_of(trial)] = {"status": "failed", "error": str(trial.error_file)}

    return Timeline()


def run_ray_arm(arm: str, plan, task, folder: Path) -> dict:
    """One run of a Ray arm on a fresh local Ray with the arm's settings; wall time (s),
    latencies (s) and CPU seconds by process title."""
    import ray

    env = {k: v for name in arm_settings(arm) for k, v in SETTINGS[name].items()}
    saved = dict(os.environ)
    os.environ.update(env)  # before ray.init: the local Ray's processes inherit it
    timeline = make_timeline()
    try:
        ray_setup.ensure_ray(verbose=False)
        own = time.process_time()
        with CpuByProcess() as sampler:
            t0 = time.perf_counter()
            if arm == FLOOR:
                run_floor(plan, task, folder, [timeline])
            else:
                ff.run_sweep(task, plan, name="overhead", storage_path=str(folder), live_fit=False,
                             verbose=False, callbacks=[timeline])
            wall = time.perf_counter() - t0
        cpu = sampler.by_title()
        cpu["this script (Tune driver)"] = time.process_time() - own
    finally:
        ray.shutdown()
        os.environ.clear()  # the Ray's address (ray_setup.pin_local_address) and the arm's settings go
        os.environ.update(saved)
    bad = sorted(k for k in timeline.start if timeline.last.get(k, {}).get("status") != "ok")
    if bad or len(timeline.end) != len(plan):
        errors = {k: timeline.last.get(k, {}).get("error") for k in bad}
        raise RuntimeError(f"arm {arm}: {len(bad)} of {len(plan)} points did not finish ok: {errors}; "
                           f"the trial logs are under {folder}")
    last = timeline.last
    return {
        "wall": wall,
        "to_first": [last[k]["first_step_at"] - timeline.start[k] for k in timeline.start],
        "from_last": [timeline.end[k] - last[k]["last_step_at"] for k in timeline.end],
        "cpu": cpu,
    }


def arm_settings(arm: str) -> list:
    """The SETTINGS names of an arm `flops_fit[a+b]`; [] for the others."""
    return arm[len(FLOPS_FIT) + 1:-1].split("+") if arm.startswith(FLOPS_FIT + "[") else []


def _ready(seconds: float) -> None:
    """A pool process's first job: its imports done before the clock starts."""
    import torch  # noqa: F401

    time.sleep(seconds)


def run_plain(plan, task, concurrency: int) -> dict:
    """The points in `concurrency` processes of 1 torch thread each, taken in plan order as
    Tune takes the Ray arms' trials; wall time (s) from the first point's start."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(concurrency, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_ready, [POOL_READY_S] * concurrency))  # every process started and imported
        t0 = time.perf_counter()
        list(pool.map(functools.partial(train_plain, task=task, threads=1), list(plan)))
        return {"wall": time.perf_counter() - t0}


# --- the report --------------------------------------------------------------------------------


# The processes Ray Train starts for every TorchTrainer.fit() (and Tune's trial driver):
# the cost of the required shape, summed in RESULTS.md's table.
PER_POINT_PROCESSES = ("ray::TrainController", "ray::PlacementGroupCleaner", "ray::ImplicitFunc",
                       "ray::DatasetManager", "ray::SynchronizationActor", "ray::_QueueActor",
                       "ray::TrainStateActor")
WORKER_PROCESS = "ray::RayTrainWorker"


def cpu_per_point(repeats: list, titles, points: int) -> float:
    """CPU seconds per point of the processes titled `titles` (None: all), median over repeats."""
    return statistics.median(sum(v for t, v in r["cpu"].items() if titles is None or t in titles)
                             for r in repeats) / points


def markdown_table(arms: list, runs: dict, plan) -> list:
    """RESULTS.md's form of a run: one column per arm, medians over repeats; then each arm's
    wall time over the floor's, paired repeat by repeat."""
    n = len(plan)
    cells = defaultdict(dict)
    med = {a: statistics.median(r["wall"] for r in runs[a]) for a in arms}
    paired = {}
    for a in arms:
        walls = [r["wall"] for r in runs[a]]
        cells["wall, median (range)"][a] = f"{med[a]:.1f} s ({min(walls):.1f}-{max(walls):.1f})"
        pairs = [r["wall"] / f["wall"] for r, f in zip(runs[a], runs[FLOOR])] if FLOOR in runs and a != PLAIN else []
        ratios = ([f"{med[a] / med[PLAIN]:.2f}"] if PLAIN in runs else []) + \
                 ([f"{statistics.median(pairs):.2f}"] if pairs else [])
        if PLAIN in runs or FLOOR in runs:
            cells[", ".join(x for x, on in (("/ plain", PLAIN in runs), ("/ floor", FLOOR in runs)) if on)][a] = \
                ", ".join(ratios)
        if pairs:
            extra = [(r["wall"] - f["wall"]) / n for r, f in zip(runs[a], runs[FLOOR])]
            cells["per point vs floor"][a] = f"{statistics.median(extra):+.1f} s" + (
                f" (ratio {min(pairs):.2f}-{max(pairs):.2f})" if a != FLOOR else "")
            if a != FLOOR:
                paired[a] = pairs
        if a == PLAIN:
            continue
        first = [x for r in runs[a] for x in r["to_first"]]
        last = [x for r in runs[a] for x in r["from_last"]]
        cells["trial start -> first step, median over points and repeats"][a] = \
            f"{statistics.median(first):.1f} s (max {max(first):.1f})"
        cells["last step -> trial end, median"][a] = f"{statistics.median(last):.1f} s (max {max(last):.1f})"
        cells["CPU seconds per point, all processes (median over repeats)"][a] = \
            f"{cpu_per_point(runs[a], None, n):.2f}"
        cells["of which Ray Train's per-point processes and the trial driver"][a] = \
            f"{cpu_per_point(runs[a], PER_POINT_PROCESSES, n):.2f}"
        cells[f"of which `{WORKER_PROCESS}`"][a] = f"{cpu_per_point(runs[a], (WORKER_PROCESS,), n):.2f}"
    lines = ["| | " + " | ".join(arms) + " |", "|---" * (len(arms) + 1) + "|"]
    lines += [f"| {row} | " + " | ".join(by_arm.get(a, "") for a in arms) + " |" for row, by_arm in cells.items()]
    if paired:
        lines += ["", "Wall time over the floor's, paired by repeat (goal for flops_fit: <= 1.10):", ""]
        lines += [f"- {a}: {', '.join(f'{x:.2f}' for x in pairs)} (median {statistics.median(pairs):.2f})"
                  for a, pairs in paired.items()]
    return lines


def points_text(plan) -> str:
    """The points and their steps, as the printout and RESULTS.md name them."""
    return f"{len(plan)} ({', '.join(f'{q.point_id}: {q.steps} steps' for q in plan)})"


def summarise(arms: list, runs: dict, plan, loads: list, table: list) -> list:
    """What a run prints: RESULTS.md's table (markdown_table), then the CPU seconds per point
    by process."""
    n = len(plan)
    lines = [
        f"points: {points_text(plan)}; {len(next(iter(runs.values())))} repeats, arms interleaved",
        f"load average (1 min) at the arms' starts: {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} CPUs",
        "", *table,
    ]
    ray_arms = [a for a in arms if a != PLAIN]
    if ray_arms:
        lines += ["", "CPU seconds per point by process (median over repeats; >= 0.05 in some arm):"]
        titles = sorted({t for a in ray_arms for r in runs[a] for t in r["cpu"]})
        cpu = {a: {t: cpu_per_point(runs[a], (t,), n) for t in titles} for a in ray_arms}
        width = max(10, *(len(a) for a in ray_arms))
        lines.append(f"  {'':<34}" + "".join(f" {a:>{width}}" for a in ray_arms))
        for t in sorted(titles, key=lambda t: -max(cpu[a][t] for a in ray_arms)):
            if max(cpu[a][t] for a in ray_arms) >= 0.05:
                lines.append(f"  {t:<34}" + "".join(f" {cpu[a][t]:>{width}.2f}" for a in ray_arms))
        lines.append(f"  {'total':<34}" + "".join(f" {cpu_per_point(runs[a], None, n):>{width}.2f}"
                                                    for a in ray_arms))
    return lines


def git_commit() -> str:
    def git(*args):
        return subprocess.run(["git", *args], cwd=HERE, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return commit + (" (working tree with uncommitted changes)" if dirty else "")


def write_section(title: str, command: str, table: list, loads: list, plan, results: Path = RESULTS) -> None:
    """Replace the figures of the section `## title` of RESULTS.md (or append the section):
    the text between its heading and its "Command:" line (what it measures) is kept; the
    command, commit, date, machine and the table of the last run replace the rest."""
    import ray
    import torch

    figures = [
        f"Command: `{command}`  ",
        f"Commit: {git_commit()}, {time.strftime('%Y-%m-%d')}  ",
        f"Machine: {os.cpu_count()} CPUs, Ray {ray.__version__}, torch {torch.__version__}; "
        f"load average {min(loads):.1f}-{max(loads):.1f} at the arms' starts (the arms' own processes "
        f"count in it); points: {points_text(plan)}",
        "", *table, "",
    ]
    text = results.read_text()
    head = f"## {title}\n"
    start = text.find(head)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + "\n".join([head, *figures])
    else:
        end = text.find("\n## ", start + len(head))
        section = text[start:end + 1] if end >= 0 else text[start:]
        intro = section[:section.index("Command:")] if "Command:" in section else head + "\n"
        text = text[:start] + intro + "\n".join(figures) + ("\n" + text[end + 1:] if end >= 0 else "")
    results.write_text(text)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arms", default=f"{PLAIN},{FLOOR},{FLOPS_FIT}",
                   help=f"comma-separated, of {PLAIN}, {FLOOR}, {FLOPS_FIT} (default: all three)")
    p.add_argument("--settings", default="",
                   help=f"comma-separated Ray settings, each an arm flops_fit[SETTING] ({', '.join(SETTINGS)}; "
                        "'a+b' combines)")
    p.add_argument("--repeats", type=int, default=REPEATS, help=f"repeats per arm (default {REPEATS})")
    p.add_argument("--budgets", type=float, nargs="+", default=BUDGETS, help="compute budgets, FLOPs")
    p.add_argument("--sizes", type=int, nargs="+", default=SIZES, help="model size dials")
    p.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md as it is")
    args = p.parse_args(argv)
    arms = [a for a in args.arms.split(",") if a]
    if not arms or any(a not in (PLAIN, FLOOR, FLOPS_FIT) for a in arms):
        p.error(f"--arms takes a comma-separated list of {PLAIN}, {FLOOR}, {FLOPS_FIT}")
    for s in (s for s in args.settings.split(",") if s):
        if any(name not in SETTINGS for name in s.split("+")):
            p.error(f"--settings takes names of {', '.join(SETTINGS)} (joined by + to combine), comma-separated")
        arms.append(f"{FLOPS_FIT}[{s}]")
    if args.repeats < 1:
        p.error("--repeats must be at least 1")

    work = Path(tempfile.mkdtemp(prefix="flops_fit-overhead-"))
    runs, loads = {a: [] for a in arms}, []
    try:
        task = make_task(str(work / "cache"))
        plan = ff.plan_sweep(task, args.budgets, sizes=args.sizes)
        task.data()  # builds the corpus cache every arm reads
        concurrency = os.cpu_count()  # as run_sweep's on a local Ray: one 1-CPU worker group per CPU
        for r in range(args.repeats):
            for i in range(len(arms)):
                arm = arms[(i + r) % len(arms)]  # rotated: no arm always runs first or last
                loads.append(os.getloadavg()[0])
                if arm == PLAIN:
                    runs[arm].append(run_plain(plan, task, concurrency))
                else:
                    runs[arm].append(run_ray_arm(arm, plan, task, work / f"{arm}-{r}"))
                print(f"repeat {r + 1}/{args.repeats} {arm}: {runs[arm][-1]['wall']:.1f} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    table = markdown_table(arms, runs, plan)
    print("\n".join(summarise(arms, runs, plan, loads, table)))
    if not args.no_write:
        command = "python benchmarks/overhead.py" + ("".join(f" {a}" for a in sys.argv[1:]) if argv is None
                                                     else "".join(f" {a}" for a in argv))
        title = "Orchestration overhead against Ray's floor" + (": Ray settings" if args.settings else "")
        write_section(title, command, table, loads, plan)


if __name__ == "__main__":
    main()
