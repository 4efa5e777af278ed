"""Running a study on Ray Tune: every (configuration, seed) of a grid is one trial; a search is Optuna's TPE
sampling configurations, each trained over every seed in one trial. Ray is local by default (all the machine's
cores, ``cpus_per_trial`` each), or a running cluster at ``address``; ASHA stops weak runs early when the study
asks. Finished runs are never repeated: a run folder with a record is skipped when the study runs again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml
from pydantic import ValidationError

from yololab.study.data import study_data
from yololab.study.spec import (
    Configuration,
    Study,
    StudyError,
    StudySpec,
    config_name,
    locate,
    resolve,
    seed_list,
)
from yololab.study.trial import (
    RUNS_DIR,
    SEARCH_OBJECTIVE,
    STOPPED,
    TUNE_METRIC,
    TUNE_TIME,
    RunRecord,
    TrialContext,
    config_drift,
    final_val,
    grid_trial,
    read_record,
    read_samples,
    run_dir,
    run_name,
    search_trial,
    training_minutes,
)

STUDY_FILE = "study.yaml"  # the resolved study, written into the study folder
# Ray's shared-memory object store: trials pass only small results through it, and the machine's memory goes
# to training (Ray's floor is 75 MiB).
OBJECT_STORE_BYTES = 100 * 2**20
RAY_DIR = "ray"  # Ray Tune's experiment state, under the study folder
LOCAL_RAY = "local"  # ray.init's address for a new local instance
RAY_CLIENT_SCHEME = "ray://"
CONNECT_TIMEOUT_S = 10  # to open a TCP connection to a cluster's address before handing it to Ray
RUN_HERE = "leave out --address to run on this machine"  # the other way out of an address that fails
AUTH_MARKS = ("AuthenticationError", "InvalidAuthToken")  # in Ray's connection errors when a token is refused
WORKER_NICENESS_ENV = "RAY_worker_niceness"  # Ray's setting: nice levels its workers add to the raylet's
GPUS_KEY = "gpus_per_trial"
ACCELERATOR_KEY = "train.accelerator"
GPU_ACCELERATORS = ("gpu", "cuda")  # Lightning accelerators that need a GPU


@dataclass
class StudyOutcome:
    study_dir: Path
    trained: int = 0  # runs (grid) or configurations (search) that ended in this call: finished, stopped by
    #                   ASHA or failed
    skipped: int = 0  # runs already finished before it
    failed: list[str] = field(default_factory=list)  # "run: error" of each trial that raised
    unfinished: int = 0  # runs / configurations an interrupt (Ctrl+C) left unfinished: the next call trains them


def run_study(study: Study, project: str | Path, name: str, address: str | None = None,
              verbose: int = 1) -> StudyOutcome:
    """Run every unfinished run of ``study`` into ``project/name/runs/``; returns what happened.

    The folder's ``study.yaml`` must be this study (a different one is an error, not a mix)."""
    study_dir = (Path(project) / name).resolve()
    _claim(study, study_dir)
    context = TrialContext(study.spec, str(study_dir), str(study_data(study.spec, study_dir)),
                           study.spec.cpus_per_trial)
    outcome = StudyOutcome(study_dir)
    if study.spec.search is not None:
        _search(study, context, outcome, address, verbose)
    else:
        _grid(study, context, outcome, address, verbose)
    return outcome


def _claim(study: Study, study_dir: Path) -> None:
    """Write ``study.yaml`` into a new study folder, or check that an existing one holds the same study or one it
    grows (:func:`grows`) and that its finished runs are still what their configurations give: then they are
    kept and only the new runs train."""
    resolved = study.spec.model_dump(mode="json")
    path = study_dir / STUDY_FILE
    if path.is_file() and not grows(_recorded(path), resolved):
        raise StudyError(path, None, f"holds a different study than {study.path}: use another --name (or delete "
                         "the folder) rather than mixing two studies' runs; a study may only grow there (levels "
                         "or seeds appended, more search samples)")
    if path.is_file():
        _check_finished_runs(study, study_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# resolved from {study.path}\n" + yaml.safe_dump(resolved, sort_keys=False))


DRIFT_SHOWN = 3  # changed fields a refusal names


def _check_finished_runs(study: Study, study_dir: Path) -> None:
    """Refuse to continue a study whose finished runs were trained with other values than their configurations
    resolve to now (a default changed in between): mixing them would compare two different studies."""
    full_data = study_data(study.spec, study_dir)
    for folder in sorted((study_dir / RUNS_DIR).glob("*")):
        record = read_record(folder)
        if record is None or not (folder / "config.yaml").is_file():
            continue
        drift = config_drift(study.spec, folder, record, full_data)
        if drift:
            shown = list(drift.items())[:DRIFT_SHOWN]
            changes = "; ".join(f"{key}: {then!r} then, {now!r} now" for key, (then, now) in shown)
            changes += f"; {len(drift) - len(shown)} more" if len(drift) > len(shown) else ""
            raise StudyError(folder / "config.yaml", None, f"this finished run was trained with other values than "
                             f"{study.path} gives now ({changes}): a default changed since; name the values in "
                             "the study's base, or use another --name")


def _recorded(path: Path) -> dict:
    """The resolved study a folder's study.yaml holds, with the fields a newer yololab added to study files at
    their defaults (a folder written before them is the same study); as written when it no longer validates."""
    recorded = yaml.safe_load(path.read_text()) or {}
    try:
        return StudySpec(**recorded).model_dump(mode="json")
    except (ValidationError, TypeError):
        return recorded


# Fields of a resolved study that may grow in a folder that holds it, and fields that say where its runs train,
# not what they measure (a study begun on CPUs may go on with GPUs); every other field must stay equal.
GROWING_FIELDS = ("description", "factors", "seeds", "search")
RESOURCE_FIELDS = ("cpus_per_trial", "gpus_per_trial")


def grows(old: dict, new: dict) -> bool:
    """True when the resolved study ``new`` is ``old`` or ``old`` grown: a grid's factors with levels appended
    (same factors, same order, old levels first and unchanged) and seeds appended, or a search asking for more
    samples over the same space and seeds; a trial's cores and GPUs may differ. Its finished runs then belong to
    ``new`` under the same names, and the baseline (a factor's first level unless named) is unchanged."""
    kept = GROWING_FIELDS + RESOURCE_FIELDS
    if _without(old, kept) != _without(new, kept):
        return False
    old_seeds, new_seeds = seed_list(old.get("seeds") or []), seed_list(new.get("seeds") or [])
    old_factors, new_factors = old.get("factors"), new.get("factors")
    if old_factors is not None and new_factors is not None:
        return (list(old_factors) == list(new_factors) and _starts(new_seeds, old_seeds)
                and all(_starts(new_factors[key], levels) for key, levels in old_factors.items()))
    old_search, new_search = old.get("search"), new.get("search")
    if old_search is None or new_search is None or old_seeds != new_seeds:
        return False
    same_space = _without(old_search, ("samples",)) == _without(new_search, ("samples",))
    return same_space and new_search["samples"] >= old_search["samples"]


def _without(mapping: dict, keys: tuple[str, ...]) -> dict:
    return {k: v for k, v in mapping.items() if k not in keys}


def _starts(longer: list, prefix: list) -> bool:
    return longer[:len(prefix)] == prefix


# --------------------------------------------------------------------------------------------- Ray


def _start_ray(address: str | None, verbose: int) -> bool:
    """Connect to ``address`` or start a local Ray with the machine's cores; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        unreachable = _unreachable(address)
        if unreachable:
            raise StudyError(f"--address {address}", None, unreachable)
        try:
            ray.init(address=address, log_to_driver=verbose > 0)
        except ConnectionError as err:
            raise StudyError(f"--address {address}", None, _connection_problem(err)) from err
    else:
        # "local": a new Ray of this process, not a cluster an earlier `ray start` left on the machine (which
        # plain ray.init() would join, refusing num_cpus). Its workers, the trials, at this process's priority:
        # Ray's own default runs them 15 nice levels lower, behind any other work on the machine.
        os.environ.setdefault(WORKER_NICENESS_ENV, "0")
        ray.init(address=LOCAL_RAY, num_cpus=os.cpu_count(), object_store_memory=OBJECT_STORE_BYTES,
                 include_dashboard=False, log_to_driver=verbose > 0)
    return True


def _unreachable(address: str) -> str | None:
    """Why nothing answers at ``address`` (``host:port``, ``[ipv6]:port`` or ``ray://host:port``), found by
    opening a TCP connection to it; None when it answers or is not a host and port (``auto``). ``ray.init``
    itself keeps retrying an address where nothing listens for minutes."""
    import socket

    host, _, port = address.removeprefix(RAY_CLIENT_SCHEME).rpartition(":")
    if not host or not port.isdigit():
        return None
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()  # [IPv6]
    except OSError as err:
        return (f"nothing answers there ({err.strerror or err}): start the cluster (`ray start --head "
                f"--port {port}` on its first node) or {RUN_HERE}")
    return None


def _connection_problem(err: ConnectionError) -> str:
    """What a failed ``ray.init(address=...)`` means, in one line: Ray's own error is a chain of exceptions whose
    messages hold tracebacks (a refused token shows there as ``AuthenticationError`` / ``InvalidAuthToken``)."""
    from ray.exceptions import AuthenticationError

    cause = err
    while cause is not None:
        if isinstance(cause, AuthenticationError) or any(mark in str(cause) for mark in AUTH_MARKS):
            return ("the Ray cluster there asks for its token: set RAY_AUTH_MODE=token, with the cluster's token "
                    "in ~/.ray/auth_token or RAY_AUTH_TOKEN (Ray's token authentication)")
        cause = cause.__cause__ or cause.__context__
    return f"no Ray cluster answers there: start one (`ray start --head` on its first node) or {RUN_HERE}"


def trial_gpus(study: Study, cluster_gpus: float, local: bool) -> tuple[float, str | None]:
    """(GPUs of one trial, the ``train.accelerator`` every run gets or None to leave the config's) on a Ray
    whose nodes hold ``cluster_gpus`` GPUs in all.

    ``gpus_per_trial`` unset: 1 when there are GPUs, else 0 (0 too when the base asks for the CPU). A trial
    without a GPU trains on the CPU even where GPUs are (Ray leaves them visible to it). Raises StudyError,
    naming the study file's line, when a trial asks for more GPUs than this machine's Ray has (``local``; a
    cluster may add nodes) or when the base's accelerator needs a GPU that the trials do not get."""
    wanted, accelerator = study.spec.gpus_per_trial, resolve(study.spec, {}).train.accelerator
    if wanted is None:
        wanted = 1.0 if cluster_gpus > 0 and accelerator != "cpu" else 0.0
    if wanted > 0 and local and wanted > cluster_gpus:
        raise locate(study.path, (GPUS_KEY,), f"{wanted:g} GPUs per run, but Ray on this machine sees "
                     f"{cluster_gpus:g} (set {GPUS_KEY}: 0 to train on the CPU)")
    if wanted == 0 and accelerator in GPU_ACCELERATORS:
        raise locate(study.path, (GPUS_KEY,), f"the base sets {ACCELERATOR_KEY}: {accelerator}, which needs a "
                     f"GPU, but the runs get none (set {GPUS_KEY} above 0)")
    return wanted, ("cpu" if wanted == 0 and cluster_gpus > 0 else None)


def _tune(trainable, study: Study, context: TrialContext, outcome: StudyOutcome, address: str | None,
          verbose: int, param_space: dict, tune_config_args: dict):
    """``Tuner.fit`` of ``trainable`` (one trial = ``cpus_per_trial`` cores and ``trial_gpus`` GPUs); Ray is
    shut down afterwards when this call started it."""
    import ray
    from ray import tune

    started = _start_ray(address, verbose)
    try:
        gpus, accelerator = trial_gpus(study, ray.cluster_resources().get("GPU", 0.0), local=not address)
        context = replace(context, gpus=gpus, accelerator=accelerator)
        trainable = tune.with_resources(tune.with_parameters(trainable, context=context),
                                        {"cpu": context.threads, "gpu": gpus})
        tuner = tune.Tuner(
            trainable, param_space=param_space,
            tune_config=tune.TuneConfig(trial_dirname_creator=lambda trial: trial.trial_id,
                                        trial_name_creator=lambda trial: _label(trial.config), **tune_config_args),
            run_config=tune.RunConfig(name="tune", storage_path=str(Path(context.study_dir) / RAY_DIR),
                                      verbose=verbose, failure_config=tune.FailureConfig(max_failures=0)),
        )
        results = tuner.fit()
    finally:
        if started:
            ray.shutdown()
    outcome.failed += [f"{_label(result.config)}: {str(result.error).strip().splitlines()[-1]}"
                       for result in results if result.error is not None]
    return results


def _label(config: dict) -> str:
    """A trial's run name (grid) or sampled values (search)."""
    return str(config["run"]) if "run" in config else config_name({k: str(v) for k, v in config.items()})


# --------------------------------------------------------------------------------------------- grid


def _grid(study: Study, context: TrialContext, outcome: StudyOutcome, address: str | None, verbose: int) -> None:
    pending = {run_name(c.name, seed): (c, seed) for c in study.configurations for seed in study.seeds
               if read_record(run_dir(outcome.study_dir, c.name, seed)) is None}
    outcome.skipped = len(study.configurations) * len(study.seeds) - len(pending)
    if not pending:
        return
    from ray import tune

    asha = study.spec.asha
    stopped: set[str] = set()
    args: dict = {"metric": TUNE_METRIC, "mode": "max"}
    if asha is not None:
        args["scheduler"] = _asha_noting_stops(study, stopped)
    context = replace(context, runs=pending)
    _tune(grid_trial, study, context, outcome, address, verbose, {"run": tune.grid_search(list(pending))}, args)
    _record_stopped({name: pending[name] for name in stopped}, outcome)
    failed = {line.split(":", 1)[0] for line in outcome.failed}
    left = [name for name, (configuration, seed) in pending.items() if name not in failed
            and read_record(run_dir(outcome.study_dir, configuration.name, seed)) is None]
    outcome.trained, outcome.unfinished = len(pending) - len(left), len(left)


def _asha_noting_stops(study: Study, stopped: set[str]):
    """Ray's ASHA scheduler over a grid's epochs that adds the name of each run it stops to ``stopped``. Ray Tune
    ends every running trial the same way when it is interrupted (Ctrl+C): only these runs were stopped by ASHA."""
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    class NotingASHA(ASHAScheduler):
        def on_trial_result(self, tune_controller, trial, result: dict) -> str:
            decision = super().on_trial_result(tune_controller, trial, result)
            if decision == TrialScheduler.STOP:
                stopped.add(trial.config["run"])
            return decision

    asha = study.spec.asha
    return NotingASHA(time_attr=TUNE_TIME, max_t=study.spec.budget.epochs, grace_period=asha.grace_epochs,
                      reduction_factor=asha.reduction_factor)


def _record_stopped(stopped: dict[str, tuple[Configuration, int]], outcome: StudyOutcome) -> None:
    """Runs ASHA stopped early have no record (their trial was ended mid-training): write one, so that the
    study does not train them again and the statistics leave them out."""
    for configuration, seed in stopped.values():
        folder = run_dir(outcome.study_dir, configuration.name, seed)
        if read_record(folder) is None and folder.is_dir():
            epochs = final_val(folder).get("epoch", -1) + 1
            RunRecord(configuration.name, configuration.levels, configuration.overrides, seed, STOPPED, epochs,
                      training_minutes(folder)).write(folder)


# --------------------------------------------------------------------------------------------- search


def _distribution(kind: str, values: list):
    import optuna

    if kind == "choice":
        return optuna.distributions.CategoricalDistribution(values)
    if kind == "int":
        return optuna.distributions.IntDistribution(int(values[0]), int(values[1]))
    return optuna.distributions.FloatDistribution(float(values[0]), float(values[1]), log=kind == "loguniform")


def searched(study: Study, study_dir: Path) -> dict[str, tuple[Configuration, list[RunRecord]]]:
    """Configurations a search has asked for so far: name -> (configuration, records of its finished seeds)."""
    found: dict[str, tuple[Configuration, list[RunRecord]]] = {}
    for folder in sorted((study_dir / RUNS_DIR).glob("*")):
        record = read_record(folder)
        if record is not None:
            configuration = Configuration(record.config, record.levels, record.overrides)
            found.setdefault(record.config, (configuration, []))[1].append(record)
    for configuration in read_samples(study_dir):  # asked for, no seed finished yet
        found.setdefault(configuration.name, (configuration, []))
    return found


def _complete(study: Study, found: dict[str, tuple[Configuration, list[RunRecord]]]) -> dict[str, list[RunRecord]]:
    """The configurations of ``found`` (:func:`searched`) finished on every seed: name -> their records."""
    return {name: records for name, (_, records) in found.items() if len(records) == len(study.seeds)}


def searcher(study: Study, study_dir: Path):
    """Ray Tune's OptunaSearch for what is left of a search: configurations whose seeds all finished are told
    to it with their objective, the ones begun but unfinished are evaluated first, and new ones are drawn by a
    TPE sampler seeded ``seed + configurations asked for so far`` (a sampler seeded as before would draw the
    same first configurations again). Returns (searcher, samples left to run, runs already finished)."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    search = study.spec.search
    space = {key: _distribution(*next(iter(dist.items()))) for key, dist in search.space.items()}
    found = searched(study, study_dir)
    complete = _complete(study, found)
    partial = [c.overrides for name, (c, _) in found.items() if name not in complete]
    algorithm = OptunaSearch(space=space, metric=SEARCH_OBJECTIVE, mode="max", points_to_evaluate=partial or None,
                             sampler=optuna.samplers.TPESampler(seed=search.seed + len(found)))
    for name, records in complete.items():
        finals = [final_val(run_dir(study_dir, name, r.seed)).get(TUNE_METRIC) for r in records]
        finals = [v for v in finals if v is not None]
        if finals:
            algorithm.add_evaluated_point(found[name][0].overrides, sum(finals) / len(finals))
    return algorithm, search.samples - len(complete), len(complete) * len(study.seeds)


def _search(study: Study, context: TrialContext, outcome: StudyOutcome, address: str | None,
            verbose: int) -> None:
    algorithm, remaining, outcome.skipped = searcher(study, outcome.study_dir)
    if remaining > 0:
        _tune(search_trial, study, context, outcome, address, verbose, {},
              {"search_alg": algorithm, "num_samples": remaining})
        left = study.spec.search.samples - len(_complete(study, searched(study, outcome.study_dir)))
        outcome.unfinished = max(0, left - len(outcome.failed))
        outcome.trained = remaining - left
