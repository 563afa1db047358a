"""``mpo eval CHECKPOINT --suite SUITE``: per-example evaluation in this process (no Ray).

The model is an mpo checkpoint (CHECKPOINT), or an external model (``jobs.external``): ``--model
package.module:factory [--weights FILE]`` or ``--model FILE`` (TorchScript), or ``--robustbench
NAME --threat-model Linf|L2``, with ``--dataset`` and the input scale it expects. Writes the run-folder layout the sweep writes: ``OUT/run.json`` (created once),
``OUT/manifest.json`` (merged: the groups, the model and the shards evaluated) and
``OUT/results/<model_id>/<attack>__<start>-<stop>.parquet``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from orchestrator.commands import progress_bars
from orchestrator.commands.data import DATA_DIR_OPTION
from orchestrator.commands.train import THREADS_OPTION

if TYPE_CHECKING:
    import torch

    from jobs.external import ExternalModel
    from jobs.suite import EvalSuite


def write_run_json(out: Path, *, name: str, device: torch.device) -> None:
    """``run.json`` once per run folder (an existing one is kept)."""
    from jobs.io import run_record, write_json_atomic

    path = out / "run.json"
    if not path.exists():
        write_json_atomic(path, run_record(name, device=device))


def update_manifest(out: Path, suite: EvalSuite, record: dict[str, Any], model_id: str, label: str,
                    groups: list[str], shards: list[dict[str, Any]]) -> None:
    """Merge this evaluation into ``manifest.json`` (groups, trials, shards); ``record`` is the
    model's config snapshot (a training config, or an external model's config-like record)."""
    from jobs.io import read_json, write_json_atomic
    from orchestrator.runfolder import RunDirError

    path = out / "manifest.json"
    manifest: dict[str, Any] = {"groups": {}, "trials": {}, "shards": []}
    if path.exists():
        manifest.update(read_json(path, error=RunDirError, what="manifest"))
    for g in groups:
        spec = suite.groups[g]
        entry = manifest["groups"].setdefault(
            g, {"dataset": suite.dataset, "families": spec["families"],
                "affine": spec.get("affine", []), "models": []})
        if model_id not in entry["models"]:
            entry["models"].append(model_id)
    manifest["trials"][model_id] = {
        "label": label, "dataset": record["dataset"]["name"], "strategy": record["strategy"],
        "groups": groups, "config": record,
    }
    seen = {(s["model_id"], s["attack"], s["start"], s["stop"]) for s in manifest["shards"]}
    for s in shards:
        if (s["model_id"], s["attack"], s["start"], s["stop"]) not in seen:
            manifest["shards"].append(s)
    write_json_atomic(path, manifest)


def _pct(v: float | None) -> str:
    return "-" if v is None or v != v else f"{100 * v:.1f}"


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
@click.option("--device", default="auto", show_default=True,
              help="auto (cuda when available), cpu, cuda or cuda:N.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True,
              help="Inputs per attack batch.")
@THREADS_OPTION
def eval_command(
    checkpoint: str | None, suite_name: str, model_ref: str | None, weights: str | None,
    factory_kwargs: str | None, robustbench: str | None, threat_model: str | None,
    model_dir: str | None, dataset: str | None, input_range: str, mean: str | None,
    std: str | None, n_test: int | None, out_dir: str | None, data_dir: str | None,
    download: bool, shard_size: int, attacks: tuple[str, ...], label: str | None, device: str,
    batch_size: int, threads: int | None,
) -> None:
    """Evaluate a model against an attack suite: CHECKPOINT (a checkpoint.pt or a training
    folder), or an external model (--model, --robustbench).

    Shards already evaluated with the same content are skipped, so re-running is cheap.
    """
    from jobs.checkpoint import CheckpointFormatError, load_checkpoint
    from jobs.config import make_train_config
    from jobs.evaluation import evaluate, load_model, plan_shards
    from jobs.external import ExternalModelError
    from jobs.results import summarize
    from jobs.suite import load_suite
    from jobs.training import resolve_device
    from orchestrator.console import Col, make_console, print_table
    from orchestrator.resources import available_cpus, set_torch_threads

    set_torch_threads(threads or available_cpus())
    console = make_console()
    given = [name for name, v in (("CHECKPOINT", checkpoint), ("--model", model_ref),
                                  ("--robustbench", robustbench)) if v is not None]
    if len(given) != 1:
        raise ExternalModelError("give one model: CHECKPOINT, --model package.module:factory "
                                 "(or a TorchScript file) or --robustbench NAME; got "
                                 + (", ".join(given) or "none"))
    source: str | Path | ExternalModel
    unit_range = _floats(input_range, "--input-range", count=2) == [0.0, 1.0]
    external_only = [opt for opt, v in (("--weights", weights), ("--factory-kwargs", factory_kwargs),
                                        ("--threat-model", threat_model), ("--model-dir", model_dir),
                                        ("--dataset", dataset), ("--mean", mean), ("--std", std),
                                        ("--input-range", None if unit_range else 1))
                     if v is not None]
    if checkpoint is not None and external_only:
        raise ExternalModelError(f"{', '.join(external_only)}: for external models (--model, "
                                 "--robustbench); a checkpoint carries its own dataset and model")
    if checkpoint is not None:
        ckpt = Path(checkpoint)
        if ckpt.is_dir():
            ckpt = ckpt / "checkpoint.pt"
            if not ckpt.exists():
                raise CheckpointFormatError(f"{checkpoint}: a folder without checkpoint.pt; give "
                                            "a checkpoint.pt or a training folder (mpo train --out)")
        source = ckpt
        dataset = make_train_config(load_checkpoint(ckpt)["config"],
                                    source=f"{ckpt} (embedded config)").dataset.name
    else:
        source = external_from_options(
            model_ref=model_ref, weights=weights, factory_kwargs=factory_kwargs,
            robustbench=robustbench, threat_model=threat_model, model_dir=model_dir,
            dataset=dataset, input_range=input_range, mean=mean, std=std)
        dataset = source.dataset
    suite = load_suite(suite_name, dataset=dataset)
    for name in attacks:
        suite.attack(name)
    dev = resolve_device(device)
    loaded = load_model(source, suite, dev, label=label, download=download)
    model_id = loaded.model_id
    label = label or loaded.label or model_id
    n = n_test or suite.n_test
    out = Path(out_dir) if out_dir else Path("runs") / "eval" / suite.name
    names = list(attacks) or [a.name for a in suite.attacks]
    shards = plan_shards(n, shard_size)
    groups = list(suite.groups)
    console.print(
        f"[bold]{label}[/bold] ({model_id}) vs suite [cyan]{suite.name}[/cyan]: "
        f"{len(names)} attacks x {len(shards)} shards of the first {n} test points, "
        f"device {dev} -> {out}"
    )

    progress = progress_bars(console)
    task = progress.add_task("attacks", total=len(names) * len(shards))

    def on_shard(name: str, start: int, stop: int, path: Path) -> None:
        progress.update(task, advance=1, description=f"{name} [{start}, {stop})")

    out.mkdir(parents=True, exist_ok=True)
    write_run_json(out, name=out.name, device=dev)
    with progress:
        paths = evaluate(
            loaded, suite, n_test=n, out_dir=out, shard_size=shard_size, data_dir=data_dir,
            device=dev, model_label=label, groups=groups, download=download,
            attacks=names, batch_size=batch_size, on_shard=on_shard,
        )
    update_manifest(
        out, suite, loaded.record, model_id, label, groups,
        [{"model_id": model_id, "attack": a, "start": s, "stop": e}
         for a in names for s, e in shards],
    )

    summary = summarize(paths, suite.groups).get(model_id)
    if summary is None:
        console.print("no full-budget results to summarise")
        return
    fams = list(summary["families"])
    print_table(console, [Col("clean", "num"), *(Col(f, "num") for f in fams)],
                [[_pct(summary["clean"]), *[_pct(summary["families"][f]) for f in fams]]],
                title=f"{label}: accuracy (%) on {summary['n']} test points")
    rows = [[g, ", ".join(s["families"]), _pct(s["union"]), _pct(s["average"]),
             ", ".join(f"{f} {_pct(v)}" for f, v in s["affine"].items()) or "-"]
            for g, s in summary["groups"].items()]
    print_table(console, [Col("group"), Col("families", "text"), Col("union", "num"),
                          Col("average", "num"), Col("affine", "text")], rows, title="groups")
    console.print(f"results: [green]{out / 'results' / model_id}[/green] ({len(paths)} files)")
