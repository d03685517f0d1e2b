"""`bench/train.py --in-platform`: the same training alone and through the platform's Airflow task.

Each round trains the same snapshot twice with the same stage function and profile:
(a) alone, in a child process (what `bench/train.py` measures), and (b) through the real
platform: `visionloop platform up --no-pipeline` in an isolated VISIONLOOP_HOME on free ports,
`bentoml serve` started too, `training_pipeline` triggered over the Airflow REST API and
followed as `make up` follows it; `images_per_s` is read from the MLflow run, then
`visionloop platform down` stops every process group. Rounds alternate the order (ABBA).
A sampler records every process's CPU while each training runs: the platform's parts, the
training process, and everything outside (other jobs on the host), plus the load average.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.fixtures.servers import free_port  # noqa: E402

VISIONLOOP = str(Path(sys.executable).parent / "visionloop")
OUTSIDE = "outside (other jobs on the host)"
TASK_ROLE = "airflow task (supervisor + runner + its train stage process)"
TRAINING_ROLES = (TASK_ROLE, "standalone training")
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
               "TF_NUM_INTEROP_THREADS", "TF_ENABLE_ONEDNN_OPTS", "KMP_AFFINITY", "KMP_BLOCKTIME",
               "VISIONLOOP_TRAIN_THREADS")


# -- CPU sampling -------------------------------------------------------------------------------


class Sampler:
    """Every `every_s`: system CPU times and each process's CPU seconds, cmdline and process group."""

    def __init__(self, every_s: float = 2.0):
        self.every_s, self.samples = every_s, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="sampler")

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while True:
            self.samples.append(self.take())
            if self._stop.wait(self.every_s):
                return

    @staticmethod
    def take() -> dict:
        procs = {}
        for proc in psutil.process_iter(["pid", "ppid", "cmdline", "cpu_times", "create_time", "nice", "num_threads"]):
            info = proc.info
            if not info["cpu_times"]:
                continue
            try:
                pgid = os.getpgid(info["pid"])
            except OSError:
                continue
            times = info["cpu_times"]  # + reaped children: short-lived ones (DAG parsing, `uv`) count too
            procs[info["pid"]] = {"cpu": times.user + times.system + times.children_user + times.children_system,
                                  "cmd": " ".join(info["cmdline"] or [])[:160], "pgid": pgid,
                                  "created": info["create_time"], "nice": info["nice"], "ppid": info["ppid"],
                                  "threads": info["num_threads"]}
        times = psutil.cpu_times()
        busy = sum(times) - times.idle - getattr(times, "iowait", 0.0)
        return {"t": time.time(), "busy": busy, "steal": getattr(times, "steal", 0.0), "procs": procs,
                "load": os.getloadavg()}

    def window(self, t0: float, t1: float) -> tuple[dict, dict, float]:
        """First sample at/after t0 and last at/before t1 (falls back to the nearest ones)."""
        inside = [s for s in self.samples if t0 <= s["t"] <= t1] or self.samples[-2:]
        return inside[0], inside[-1], inside[-1]["t"] - inside[0]["t"]


def role(cmd: str, group: str | None) -> str:
    """A readable name for one process: its platform component and part, or `outside`."""
    if group is None:
        return "outside (other jobs on the host)"
    if group == "bench":
        return "bench (follower polling + sampler)"
    if group == "standalone":
        return "standalone training"
    for part in ("scheduler", "dag-processor", "api-server", "triggerer", "standalone"):
        if f"airflow {part}" in cmd:
            return f"airflow {part}"
    for part, name in (("-m ml.stages.train", TASK_ROLE), ("airflow worker --", TASK_ROLE), ("task runner", TASK_ROLE), ("supervisor", "airflow task supervisor"),
                       ("LocalExecutor", "airflow LocalExecutor worker"), ("serve-logs", "airflow serve-logs"),
                       ("api_server", "airflow api-server"), ("circusd", "bentoml circusd"),
                       ("uvicorn", f"{group} server worker"), ("serve", f"{group} serve")):
        if part in cmd:
            return name
    return f"{group}: {cmd.split(' ')[0].rsplit('/', 1)[-1]} {' '.join(cmd.split(' ')[1:3])}".strip()


def owner(procs: dict, pid: int, groups: dict[int, str], child: int | None) -> str | None:
    """Whose process this is: a platform group's, found through its ancestors too (Airflow gives
    each task runner its own process group), the bench's, the standalone child's, or None."""
    for _ in range(12):
        proc = procs.get(pid)
        if proc is None:
            return None
        if pid == os.getpid():
            return "bench"
        if child and pid == child:
            return "standalone"
        if proc["pgid"] in groups:
            return groups[proc["pgid"]]
        pid = proc["ppid"]
    return None


def cpu_report(sampler: Sampler, t0: float, t1: float, groups: dict[int, str], child: int | None) -> dict:
    """CPU (in cores) per role over [t0, t1]; `outside` is the host total minus ours."""
    first, last, span = sampler.window(t0, t1)
    cores: dict[str, float] = {}
    top: list[tuple[float, str]] = []
    ours = 0.0
    for pid, now in last["procs"].items():
        before = first["procs"].get(pid)
        base = before["cpu"] if before and before["created"] == now["created"] else (
            0.0 if now["created"] >= first["t"] else None)
        if base is None:
            continue
        used = (now["cpu"] - base) / span
        group = owner(last["procs"], pid, groups, child)
        if group is None:
            continue
        name = role(now["cmd"], group)
        cores[name] = cores.get(name, 0.0) + used
        ours += used
        top.append((used, f"{name} pid {pid} nice {now['nice']} threads {now['threads']}: {now['cmd'][:90]}"))
    total = (last["busy"] - first["busy"]) / span
    cores["outside (other jobs on the host)"] = max(0.0, total - ours)
    training = sum(cores.get(r, 0.0) for r in TRAINING_ROLES)
    platform = ours - training - cores.get("bench (follower polling + sampler)", 0.0)
    return {"seconds": round(span, 1), "host_busy_cores": round(total, 2), "training_cores": round(training, 3),
            "platform_background_cores": round(platform, 3),
            "steal_cores": round((last["steal"] - first["steal"]) / span, 2),
            "load_avg": [round(x, 2) for x in last["load"]],
            "cores_by_role": {k: round(v, 3) for k, v in sorted(cores.items(), key=lambda kv: -kv[1])},
            "top_processes": [f"{c:.3f} cores  {d}" for c, d in sorted(top, reverse=True)[:12]]}


def thread_facts(pid: int) -> dict:
    """What decides a training process's parallelism: affinity, nice, threads, thread variables."""
    try:
        proc = psutil.Process(pid)
        env = proc.environ()
        chain = [p.cmdline()[:3] for p in proc.parents()[:4]]
        return {"pid": pid, "nice": proc.nice(), "cpu_affinity": proc.cpu_affinity(),
                "threads": proc.num_threads(), "thread_vars": {k: env[k] for k in THREAD_VARS if k in env},
                "parents": [" ".join(c)[:80] for c in chain]}
    except psutil.Error as exc:
        return {"pid": pid, "error": str(exc)}


# -- (a) alone ----------------------------------------------------------------------------------


def child_main(home: Path, version: str, profile: str) -> None:
    """Runs in the child process: one training alone, MLflow in a SQLite file; prints one JSON line."""
    sys.path.insert(0, str(REPO))
    from ml.config import Settings

    settings = Settings.from_env(home=home, mlflow_tracking_uri=f"sqlite:///{home / 'alone-mlflow.db'}",
                                 experiment="visionloop-bench-alone")
    import mlflow

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    if mlflow.get_experiment_by_name(settings.experiment) is None:
        mlflow.create_experiment(settings.experiment, artifact_location=(home / "alone-artifacts").as_uri())
    from ml.stages.train import train

    result = train(settings, version, profile=profile)
    client = mlflow.MlflowClient(settings.mlflow_tracking_uri)
    run = client.get_run(result["run_id"])
    logged = client.get_metric_history(result["run_id"], "images_per_s")[-1].timestamp
    print(json.dumps({"images_per_s": result["images_per_s"], "epochs_run": result["epochs_run"],
                      "train_seconds": result["train_seconds"], "stage": "ml.stages.train.train",
                      "t0": run.info.start_time / 1000, "t1": logged / 1000}), flush=True)


def run_alone(home: Path, version: str, profile: str, sampler: Sampler, env: dict) -> dict:
    """(a): the stage function in a child process with nothing of the platform running."""
    load = os.getloadavg()
    proc = subprocess.Popen([sys.executable, __file__, "--child", str(home), version, profile], env=env,
                            stdout=subprocess.PIPE, stderr=open(home / "alone.log", "ab"), text=True)
    facts: dict = {}
    while proc.poll() is None:
        time.sleep(5)
        if not facts and len(sampler.samples) > 2:
            candidate = sampler.samples[-1]["procs"].get(proc.pid, {})
            if candidate.get("threads", 0) > 8:  # TF is up
                facts = thread_facts(proc.pid)
    out = proc.stdout.read().strip().splitlines()
    if proc.returncode != 0 or not out:
        raise RuntimeError(f"standalone training failed (rc {proc.returncode}); see {home / 'alone.log'}")
    result = json.loads(out[-1])
    result["cpu"] = cpu_report(sampler, result["t0"], result["t1"], {}, proc.pid)
    return {**result, "load_before": [round(x, 2) for x in load], "training_process": facts}


# -- (b) through the platform -------------------------------------------------------------------


def platform_env(home: Path, store: Path, profile: str) -> dict[str, str]:
    """An isolated platform: its own home, free ports, the bench's store, no time schedule."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VISIONLOOP_", "AIRFLOW", "MLFLOW_"))}
    env.update({
        "VISIONLOOP_HOME": str(home), "VISIONLOOP_LOCAL_STORE": str(store), "VISIONLOOP_PROFILE": profile,
        "VISIONLOOP_TRAIN_SCHEDULE": "none",
        "VISIONLOOP_MLFLOW_PORT": str(free_port()), "VISIONLOOP_AIRFLOW_PORT": str(free_port()),
        "VISIONLOOP_SERVE_PORT": str(free_port()),
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
    })
    return env


def start_serving(env: dict[str, str]) -> None:
    """`bentoml serve` as the launcher starts it (in the background: with no champion it never gets ready)."""
    code = ("from ml.config import Settings; from ml.platform.components import bentoml_component; "
            "from ml.platform.processes import ProcessManager; s = Settings.from_env(); "
            "ProcessManager(s.home.resolve()).start(bentoml_component(s))")
    subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, check=True, timeout=60)


def platform_groups(home: Path) -> dict[int, str]:
    groups = {}
    for path in (home / "run").glob("*.pid"):
        try:
            groups[int(path.read_text().split()[0])] = path.stem
        except (OSError, ValueError, IndexError):
            continue
    return groups


def trained_run(tracking_uri: str, experiment: str, since: float) -> dict | None:
    """The platform's training run once it has logged images_per_s (started after `since`)."""
    from ml.platform import mlflow_api

    run = mlflow_api.latest_run(tracking_uri, experiment)
    if not run or run["info"]["start_time"] / 1000 < since:
        return None
    metrics = {m["key"]: m for m in run.get("data", {}).get("metrics", [])}
    return run if "images_per_s" in metrics else None


def follow_training(client, settings, tracking_uri: str, dag_run_id: str, since: float, say) -> tuple[dict, dict]:
    """Poll as `make up` does (first_run's progress line every POLL_S) until images_per_s is logged."""
    from ml.platform import first_run

    watch = first_run.Watch(client, settings, tracking_uri, say)
    facts: dict = {}
    began = time.monotonic()
    while time.monotonic() - began < 3600:
        run = client.run("training_pipeline", dag_run_id)
        if run["state"] == "failed":
            raise RuntimeError(f"training_pipeline failed: {first_run._diagnose(watch, run)}")
        running = first_run._show_run(watch, run) or []
        done = trained_run(tracking_uri, settings.experiment, since)
        if done:
            return done, facts
        if not facts and time.monotonic() - began > 60:
            facts = task_facts(settings.home)
        poll = getattr(first_run, "poll_interval", None)
        time.sleep(poll(running) if poll else first_run.POLL_S)
    raise RuntimeError("no images_per_s within an hour")


def task_facts(home: Path) -> dict:
    """Thread facts of the busiest process in Airflow's group (the task runner while training)."""
    groups = {pgid: name for pgid, name in platform_groups(home).items() if name.startswith("airflow")}
    sample = [Sampler.take()]
    time.sleep(2)
    sample.append(Sampler.take())
    procs = sample[1]["procs"]
    best = max(((p["cpu"] - sample[0]["procs"].get(pid, {}).get("cpu", p["cpu"]), pid)
                for pid, p in procs.items() if owner(procs, pid, groups, None)), default=None)
    return thread_facts(best[1]) if best else {}


def retried(call, tries: int = 6, wait_s: float = 5.0):
    """SQLite-backed Airflow answers 500 while the scheduler recovers the previous round's run."""
    from ml.platform.airflow_api import AirflowApiError

    for attempt in range(tries):
        try:
            return call()
        except AirflowApiError:
            if attempt == tries - 1:
                raise
            time.sleep(wait_s)


def start_training(client, version: str, profile: str) -> dict:
    """Unpause, fail the previous round's run (stopped mid-pipeline), trigger a new one."""
    client.unpause("training_pipeline")
    for stale in client.runs("training_pipeline"):
        if stale.get("state") in ("queued", "running"):
            client.request("PATCH", f"/api/v2/dags/training_pipeline/dagRuns/{stale['dag_run_id']}",
                           json={"state": "failed"})
    return client.trigger("training_pipeline", {"dataset_version": version, "profile": profile})


def run_in_platform(home: Path, store: Path, version: str, profile: str, sampler: Sampler,
                    serving: bool) -> dict:
    """(b): up, trigger training_pipeline, follow it until the train task logged images_per_s, down."""
    sys.path.insert(0, str(REPO))
    from ml.config import Settings
    from ml.platform.airflow_api import AirflowClient
    from ml.platform.components import airflow_password, airflow_url, mlflow_uri

    env = platform_env(home, store, profile)
    settings = Settings.from_env(env)
    home.mkdir(parents=True, exist_ok=True)
    log = open(home / "bench-follow.log", "a")

    def say(line: str) -> None:
        print(line, file=log, flush=True)

    load = os.getloadavg()
    try:
        started = time.monotonic()
        up = subprocess.run([VISIONLOOP, "platform", "up", "--no-pipeline"], env=env, capture_output=True,
                            text=True, timeout=600)
        if up.returncode != 0:
            raise RuntimeError(f"platform up failed:\n{up.stdout[-2000:]}\n{up.stderr[-2000:]}")
        up_s = time.monotonic() - started
        if serving:
            start_serving(env)
        client = AirflowClient(airflow_url(settings), "admin", airflow_password(settings) or "")
        if client.wait_for_dags(("training_pipeline",), 300):
            raise RuntimeError("training_pipeline not parsed within 300 s")
        dag_run = retried(lambda: start_training(client, version, profile))
        since = time.time() - 1
        run, facts = follow_training(client, settings, mlflow_uri(settings), dag_run["dag_run_id"], since, say)
        metrics = {m["key"]: m for m in run["data"]["metrics"]}
        t0, t1 = run["info"]["start_time"] / 1000, metrics["images_per_s"]["timestamp"] / 1000
        time.sleep(sampler.every_s + 0.5)  # one sample after t1
        cpu = cpu_report(sampler, t0, t1, platform_groups(home), None)
        client.close()
        return {"images_per_s": metrics["images_per_s"]["value"], "train_seconds": metrics["train_seconds"]["value"],
                "epochs_run": metrics["epochs_run"]["value"], "platform_up_s": round(up_s, 1), "serving": serving,
                "load_before": [round(x, 2) for x in load], "cpu": cpu, "training_process": facts}
    finally:
        subprocess.run([VISIONLOOP, "platform", "down"], env=env, capture_output=True, text=True, timeout=300)
        log.close()


# -- the comparison -----------------------------------------------------------------------------


def subset_archive(archive: Path, dst: Path, per_class: int) -> Path:
    """The first `per_class` images of each class folder of a `<split>/<class>/<file>` archive."""
    import tarfile

    if dst.is_file():
        return dst
    kept: dict[str, int] = {}
    tmp = dst.with_suffix(".part")
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r|gz") as src, tarfile.open(tmp, "w:gz") as out:
        for member in src:
            parts = member.name.strip("/").split("/")
            if not member.isfile() or len(parts) < 3 or kept.get(parts[-2], 0) >= per_class:
                continue
            kept[parts[-2]] = kept.get(parts[-2], 0) + 1
            out.addfile(member, src.extractfile(member))
    tmp.rename(dst)
    return dst


def build_snapshot(home: Path, archives: tuple[Path, ...], per_class: int) -> tuple[str, dict]:
    """The bench snapshot: `per_class` images of each class of the archives, no top-up copies (reused when built)."""
    sys.path.insert(0, str(REPO))
    sources = tuple(f"folder:{subset_archive(a, home / 'subset' / f'{per_class}-{a.name}', per_class)}"
                    for a in archives)
    from ml.config import Settings

    try:
        from ml.stages.data import build
    except ImportError:  # before the stage layer
        from ml.stages.data import build
    settings = Settings.from_env(home=home, local_store=home / "store", data_sources=sources, class_target=0)
    result = build(settings)
    return result["version"], result.get("counts") or {}


def _median(results: list[dict], mode: str, key: str) -> float | None:
    values = [r[mode].get(key, r[mode]["cpu"].get(key)) for r in results]
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 3) if values else None


def per_cpu_second(result: dict, n_train: int) -> float | None:
    """Images trained per CPU-second of the training process: how well it uses the CPU it gets,
    whatever other jobs take (the wall-clock ratio carries that noise)."""
    cpu_s = result["cpu"]["training_cores"] * result["cpu"]["seconds"]
    return round(result["epochs_run"] * n_train / cpu_s, 1) if cpu_s and n_train else None


def compare(home: Path, archives: tuple[Path, ...], per_class: int, profile: str, rounds: int,
            serving: bool = True, modes: tuple[str, ...] = ("alone", "platform")) -> dict:
    """Rounds of (alone, platform), the order alternating; medians and their ratio."""
    home.mkdir(parents=True, exist_ok=True)
    version, counts = build_snapshot(home, archives, per_class)
    n_train = sum((counts.get("train") or {}).values())
    print(f"snapshot {version}: {n_train} training images; {counts}", flush=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    results = []
    with Sampler() as sampler:
        for i in range(rounds):
            order = modes if i % 2 == 0 else modes[::-1]
            row = {"round": i + 1, "order": list(order)}
            for mode in order:
                row[mode] = (run_alone(home, version, profile, sampler, env) if mode == "alone" else
                             run_in_platform(home / "platform", home / "store", version, profile, sampler, serving))
                row[mode]["images_per_cpu_s"] = per_cpu_second(row[mode], n_train)
                print(json.dumps({"round": i + 1, "mode": mode, **row[mode]}), flush=True)
            if len(modes) == 2:
                row["ratio"] = round(row["platform"]["images_per_s"] / row["alone"]["images_per_s"], 3)
            results.append(row)
    if len(modes) < 2:
        return {"rounds": results}
    alone = statistics.median(r["alone"]["images_per_s"] for r in results)
    inside = statistics.median(r["platform"]["images_per_s"] for r in results)
    return {"standalone_images_per_s": round(alone, 1), "in_platform_images_per_s": round(inside, 1),
            "ratio": round(inside / alone, 3), "per_round_ratio": [r["ratio"] for r in results],
            "standalone_images_per_cpu_s": _median(results, "alone", "images_per_cpu_s"),
            "in_platform_images_per_cpu_s": _median(results, "platform", "images_per_cpu_s"),
            "platform_background_cores": _median(results, "platform", "platform_background_cores"),
            "outside_cores": [[r[m]["cpu"]["cores_by_role"].get(OUTSIDE, 0.0) for m in ("alone", "platform")]
                              for r in results],
            "dataset_version": version, "per_class": per_class, "profile": profile, "rounds": rounds,
            "serving_running": serving, "stage": results[0]["alone"].get("stage"),
            "cpus": len(os.sched_getaffinity(0)), "uptime": open("/proc/loadavg").read().split()[:3]}


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "--child":
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    child_main(Path(sys.argv[2]), sys.argv[3], sys.argv[4])
