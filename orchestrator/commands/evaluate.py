"""``mpo eval CHECKPOINT --suite SUITE``: per-example evaluation in this process (no Ray).

The model is an mpo checkpoint (CHECKPOINT), or an external model (``jobs.external``): ``--model
package.module:factory [--weights FILE]`` or ``--model FILE`` (TorchScript), or ``--robustbench
NAME --threat-model Linf|L2``, with ``--dataset`` and the input scale it expects. The command runs
in named steps: resolve the model's source, plan the evaluation (suite, attacks, shards, run
folder), record it (``run.json`` once, and the shards in ``manifest.json`` before the first
result, so a folder killed part-way says what is missing), evaluate, summarise. The run folder is
the sweep's layout (``jobs.run_folder``): ``mpo report``, ``mpo export`` and ``mpo status`` read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from orchestrator.commands import DEVICE_OPTION, progress_bars, set_resume_hint
from orchestrator.commands.data import DATA_DIR_OPTION
from orchestrator.commands.train import THREADS_OPTION

if TYPE_CHECKING:
    from rich.console import Console

    from jobs.evaluation import LoadedModel
    from jobs.external import ExternalModel
    from jobs.suite import EvalSuite

#: the options that describe an external model, with the flag each comes from
EXTERNAL_OPTIONS = {"weights": "--weights", "factory_kwargs": "--factory-kwargs",
                    "threat_model": "--threat-model", "model_dir": "--model-dir",
                    "dataset": "--dataset", "mean": "--mean", "std": "--std"}


def _floats(text: str | None, option: str, *, count: int | None = None) -> list[float] | None:
    """``"0.5,0.25"`` -> [0.5, 0.25]; None stays None."""
    from jobs.external import ExternalModelError

    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ExternalModelError(f"{option} {text!r}: give comma-separated numbers") from None
    if count is not None and len(values) != count:
        raise ExternalModelError(f"{option} {text!r}: give {count} comma-separated numbers")
    return values


def external_from_options(*, model_ref: str | None, weights: str | None,
                          factory_kwargs: str | None, robustbench: str | None,
                          threat_model: str | None, model_dir: str | None, dataset: str | None,
                          input_range: str, mean: str | None, std: str | None) -> ExternalModel:
    """The external model the options describe (``--model`` is a TorchScript file when such a
    file exists, else a factory path)."""
    import json

    from jobs.external import ExternalModelError, parse_external

    spec: dict[str, Any] = {}
    if model_ref is not None:
        spec["torchscript" if Path(model_ref).is_file() else "factory"] = model_ref
        if dataset is None:
            raise ExternalModelError("--model needs --dataset (mnist or cifar10): the test "
                                     "points and the logits check depend on it")
    if robustbench is not None:
        spec.update(robustbench=robustbench, threat_model=threat_model, model_dir=model_dir)
        dataset = dataset or "cifar10"
    if factory_kwargs is not None:
        try:
            spec["factory_kwargs"] = json.loads(factory_kwargs)
        except json.JSONDecodeError as err:
            raise ExternalModelError(f"--factory-kwargs {factory_kwargs!r}: not JSON ({err})") from None
    rng = _floats(input_range, "--input-range", count=2)
    options = {"weights": weights, "dataset": dataset, "mean": _floats(mean, "--mean"),
               "std": _floats(std, "--std"),
               "input_range": None if rng == [0.0, 1.0] else rng}
    spec.update({k: v for k, v in options.items() if v is not None})
    return parse_external({k: v for k, v in spec.items() if v is not None},
                          source="mpo eval options")


# ----------------------------------------------------------------------------------------------
# The steps


def resolve_source(o: dict[str, Any]) -> tuple[str | Path | ExternalModel, str]:
    """(the model's source: a checkpoint path or an external model, its dataset)."""
    from jobs.checkpoint import MpoError, load_checkpoint
    from jobs.config import make_train_config
    from jobs.external import ExternalModelError

    given = [n for n, v in (("CHECKPOINT", o["checkpoint"]), ("--model", o["model_ref"]),
                            ("--robustbench", o["robustbench"])) if v is not None]
    if len(given) != 1:
        raise ExternalModelError("give one model: CHECKPOINT, --model package.module:factory "
                                 "(or a TorchScript file) or --robustbench NAME; got "
                                 + (", ".join(given) or "none"))
    if o["checkpoint"] is None:
        source = external_from_options(**{k: o[k] for k in (
            "model_ref", "robustbench", "input_range", "factory_kwargs", *EXTERNAL_OPTIONS)})
        return source, source.dataset
    unit_range = _floats(o["input_range"], "--input-range", count=2) == [0.0, 1.0]
    extra = [flag for key, flag in EXTERNAL_OPTIONS.items() if o[key] is not None]
    extra += [] if unit_range else ["--input-range"]
    if extra:
        raise ExternalModelError(f"{', '.join(extra)}: for external models (--model, "
                                 "--robustbench); a checkpoint carries its own dataset and model")
    ckpt = Path(o["checkpoint"])
    if ckpt.is_dir():
        ckpt = ckpt / "checkpoint.pt"
        if not ckpt.exists():
            raise MpoError(f"{o['checkpoint']}: a folder without checkpoint.pt; give "
                                        "a checkpoint.pt or a training folder (mpo train --out)")
    config = make_train_config(load_checkpoint(ckpt)["config"], source=f"{ckpt} (embedded config)")
    return ckpt, config.dataset.name


@dataclass(frozen=True)
class EvalPlan:
    """What one ``mpo eval`` evaluates: the loaded model, the suite, its attacks, the shards of
    the first ``n`` test points, and the run folder."""

    loaded: LoadedModel
    source: str | Path | ExternalModel
    suite: EvalSuite
    label: str
    attacks: list[str]
    n: int
    shards: list[tuple[int, int]]
    out: Path


def plan_evaluation(o: dict[str, Any], source: str | Path | ExternalModel, dataset: str) -> EvalPlan:
    from jobs.evaluation import load_model
    from jobs.run_folder import plan_shards
    from jobs.suite import load_suite
    from jobs.training import resolve_device

    suite = load_suite(o["suite_name"], dataset=dataset)
    for name in o["attacks"]:
        suite.attack(name)
    loaded = load_model(source, suite, resolve_device(o["device"]), label=o["label"],
                        download=o["download"])
    n = o["n_test"] or suite.n_test
    out = Path(o["out_dir"]) if o["out_dir"] else Path("runs") / "eval" / suite.name
    return EvalPlan(loaded, source, suite, o["label"] or loaded.label or loaded.model_id,
                    list(o["attacks"]) or [a.name for a in suite.attacks], n,
                    plan_shards(n, o["shard_size"]), out)


def record(plan: EvalPlan) -> None:
    """``run.json`` (once per run folder) and this evaluation in ``manifest.json``: the groups,
    the model and every shard, before the first result is written."""
    from jobs.io import check_writable, run_record, write_json_atomic
    from jobs.run_folder import GroupEntry, Manifest, RunFolder, ShardEntry, TrialEntry

    rf = RunFolder(check_writable(plan.out, folder=True, what="--out"))
    if not rf.run_file.exists():
        write_json_atomic(rf.run_file, run_record(plan.out.name, device=plan.loaded.device))
    manifest = rf.manifest() if rf.exists() else Manifest()
    mid, suite, rec = plan.loaded.model_id, plan.suite, plan.loaded.record
    groups = [GroupEntry(g, suite.dataset, list(v["families"]), list(v.get("affine", [])))
              for g, v in suite.groups.items()]
    source = str(plan.source.resolve()) if isinstance(plan.source, Path) else None
    trial = TrialEntry(mid, plan.label, rec["dataset"]["name"], rec["strategy"], list(suite.groups),
                       rec, list(plan.attacks), source=source)
    manifest.add_evaluation(trial, groups, [ShardEntry(mid, a, s, e) for a in plan.attacks
                                            for s, e in plan.shards])
    rf.write_manifest(manifest)


def run(plan: EvalPlan, o: dict[str, Any], console: Console) -> list[Path]:
    from jobs.evaluation import evaluate

    progress = progress_bars(console)
    task = progress.add_task("attacks", total=len(plan.attacks) * len(plan.shards))

    def on_shard(name: str, start: int, stop: int, path: Path) -> None:
        progress.update(task, advance=1, description=f"{name} [{start}, {stop})")

    with progress:
        return evaluate(plan.loaded, plan.suite, n_test=plan.n, out_dir=plan.out,
                        shard_size=o["shard_size"], data_dir=o["data_dir"],
                        device=plan.loaded.device, model_label=plan.label,
                        groups=list(plan.suite.groups), download=o["download"],
                        attacks=plan.attacks, batch_size=o["batch_size"], on_shard=on_shard)


def _pct(v: float | None) -> str:
    return "-" if v is None or v != v else f"{100 * v:.1f}"


def summarise(plan: EvalPlan, paths: list[Path], console: Console) -> None:
    """The one-screen summary: per-family and per-group accuracy."""
    from jobs.results import summarize
    from orchestrator.console import Col, print_table

    summary = summarize(paths, plan.suite.groups).get(plan.loaded.model_id)
    if summary is None:
        console.print("no full-budget results to summarise")
        return
    fams = list(summary["families"])
    print_table(console, [Col("clean", "num"), *(Col(f, "num") for f in fams)],
                [[_pct(summary["clean"]), *[_pct(summary["families"][f]) for f in fams]]],
                title=f"{plan.label}: accuracy (%) on {summary['n']} test points")
    rows = [[g, ", ".join(s["families"]), _pct(s["union"]), _pct(s["average"]),
             ", ".join(f"{f} {_pct(v)}" for f, v in s["affine"].items()) or "-"]
            for g, s in summary["groups"].items()]
    print_table(console, [Col("group"), Col("families", "text"), Col("union", "num"),
                          Col("average", "num"), Col("affine", "text")], rows, title="groups")
    console.print(f"results: [green]{plan.out / 'results' / plan.loaded.model_id}[/green] "
                  f"({len(paths)} files)")


# ----------------------------------------------------------------------------------------------
# The command


@click.command("eval")
@click.argument("checkpoint", required=False, type=click.Path(exists=True))
@click.option("--suite", "suite_name", required=True,
              help="Built-in suite name (toy, mnist-mini, mnist-paper, cifar10-paper, ...; 'paper' "
                   "and 'strong' pick the model's dataset's suite) or a YAML path.")
@click.option("--model", "model_ref", default=None,
              help="An external model instead of CHECKPOINT: package.module:factory (a callable "
                   "returning an nn.Module; the current directory is importable) or a TorchScript "
                   "file.")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False), default=None,
              help="State dict for the factory's module, read with torch.load(weights_only=True) "
                   "(a dict of tensors, or one under 'state_dict', 'model', ...).")
@click.option("--factory-kwargs", default=None, help="Keyword arguments of the factory, as JSON.")
@click.option("--robustbench", "robustbench", default=None,
              help="A RobustBench model zoo name (needs pip install 'mpo[robustbench]').")
@click.option("--threat-model", type=click.Choice(["Linf", "L2"]), default=None,
              help="The RobustBench threat model the entry is listed under.")
@click.option("--model-dir", type=click.Path(file_okay=False), default=None,
              help="RobustBench model folder, in its layout DIR/cifar10/Linf/NAME.pt. "
                   "Default: ./models.")
@click.option("--dataset", type=click.Choice(["mnist", "cifar10"]), default=None,
              help="The external model's dataset (RobustBench: cifar10).")
@click.option("--input-range", default="0,1", show_default=True,
              help="The input scale the external model expects (e.g. 0,255): inputs in [0, 1] "
                   "are mapped onto it inside a wrapper, so radii stay in [0, 1].")
@click.option("--mean", default=None,
              help="Per-channel mean the wrapper subtracts, comma-separated, in the "
                   "--input-range scale.")
@click.option("--std", default=None, help="Per-channel std the wrapper divides by (with --mean).")
@click.option("--n-test", type=click.IntRange(min=1), default=None,
              help="Evaluate the first N test points. Default: the suite's n_test.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Run folder. Default: runs/eval/<suite>.")
@DATA_DIR_OPTION
@click.option("--download/--no-download", default=False, show_default=True,
              help="Download the dataset (and a RobustBench checkpoint) when it is missing.")
@click.option("--shard-size", type=click.IntRange(min=1), default=100, show_default=True,
              help="Test points per results file.")
@click.option("--attack", "attacks", multiple=True,
              help="Only this suite attack (repeatable). Default: all of them.")
@click.option("--label", default=None,
              help="Model label in the results (default: the config's; for an external model "
                   "the factory's, file's or zoo entry's name).")
@DEVICE_OPTION
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True,
              help="Inputs per attack batch.")
@THREADS_OPTION
@click.pass_context
def eval_command(ctx: click.Context, **options: Any) -> None:
    """Evaluate a model against an attack suite: CHECKPOINT (a checkpoint.pt or a training
    folder), or an external model (--model, --robustbench).

    Shards already evaluated with the same content are skipped, so re-running is cheap.
    """
    from orchestrator.console import make_console
    from orchestrator.resources import available_cpus, set_torch_threads

    set_torch_threads(options["threads"] or available_cpus())
    console = make_console()
    source, dataset = resolve_source(options)
    plan = plan_evaluation(options, source, dataset)
    console.print(
        f"[bold]{plan.label}[/bold] ({plan.loaded.model_id}) vs suite [cyan]{plan.suite.name}[/cyan]: "
        f"{len(plan.attacks)} attacks x {len(plan.shards)} shards of the first {plan.n} test points, "
        f"device {plan.loaded.device} -> {plan.out}"
    )
    record(plan)
    set_resume_hint(ctx, f"every finished shard is saved in {plan.out}; run the same command "
                    "again to continue (finished shards are not recomputed)")
    summarise(plan, run(plan, options, console), console)
