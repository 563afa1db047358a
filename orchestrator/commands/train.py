"""``mpo train CONFIG.yaml``: train one model in this process (no Ray), with progress bars."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from orchestrator.commands import DEVICE_OPTION, progress_bars, set_resume_hint
from orchestrator.commands.data import DATA_DIR_OPTION

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

#: ``--threads`` of the commands that run torch in this process (``mpo train``, ``mpo eval``)
THREADS_OPTION = click.option(
    "--threads", type=click.IntRange(min=1), default=None,
    help="Torch threads (intra- and inter-op). Default: the CPUs this process may use "
         "(its CPU affinity: a container's or taskset's limit, not the machine's cores).")


def _print_metrics(result: Any, title: str, console: Console) -> None:
    """The last epochs' metrics and where the checkpoint is."""
    from orchestrator.console import Col, print_table

    if result.resumed_from_epoch:
        console.print(f"resumed after epoch {result.resumed_from_epoch}")
    adv_keys = sorted({k for m in result.metrics for k in m if k.startswith("adv_acc/")})
    cols = [Col("epoch", "num"), Col("loss", "num"), Col("clean", "num"),
            *(Col(k[8:], "num") for k in adv_keys), Col("lr", "num", 1), Col("ex/s", "num", 2),
            Col("s", "num", 3)]
    rows = [[str(m["epoch"]), f"{m['train_loss']:.4f}", f"{m['clean_acc']:.3f}",
             *[f"{m.get(k, float('nan')):.3f}" for k in adv_keys],
             f"{m['lr']:.2g}", f"{m['examples_per_s']:.0f}", f"{m['seconds']:.1f}"]
            for m in result.metrics[-12:]]
    print_table(console, cols, rows, title=title)
    console.print(f"checkpoint: [green]{result.checkpoint}[/green]")
    console.print(f"next: mpo eval {result.checkpoint} --suite <suite>", soft_wrap=True)


def _progress_callbacks(progress: Progress, epochs: int) -> dict[str, Callable[[dict], None]]:
    """``on_step`` and ``on_epoch`` for ``jobs.training.train`` that move the two bars."""
    epochs_task = progress.add_task("epochs", total=epochs, info="")
    batch_task = progress.add_task("batches", total=1, info="")

    # called every 10 steps (a host read of the loss each time): often enough for the bar
    def on_step(info: dict) -> None:
        progress.update(
            batch_task, completed=info["step"], total=info["steps_per_epoch"],
            description=f"epoch {info['epoch']}", info=f"loss {info['loss']:.4f}",
        )

    def on_epoch(m: dict) -> None:
        adv = "  ".join(f"{k[8:]} {v:.3f}" for k, v in m.items() if k.startswith("adv_acc/"))
        progress.update(epochs_task, completed=m["epoch"],
                        info=f"clean {m['clean_acc']:.3f}  {adv}")

    return {"on_step": on_step, "on_epoch": on_epoch}


@click.command()
@click.argument("config", metavar="CONFIG")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Output folder (checkpoint.pt, state.pt, metrics.jsonl). Default: runs/train/<model_id>.",
)
@DATA_DIR_OPTION
@click.option("--download/--no-download", default=False, show_default=True,
              help="Download the dataset when it is missing.")
@DEVICE_OPTION
@click.option("--fresh", is_flag=True, help="Start over even if the folder holds a resumable state.")
@THREADS_OPTION
@click.option("--precision", type=click.Choice(["fp32", "bf16", "tf32"]), default="fp32",
              show_default=True,
              help="bf16: autocast to bfloat16; tf32: TF32 matmuls and convolutions (CUDA only). "
                   "`mpo bench` measures which is faster on this device.")
@click.option("--compile", "compile_model", is_flag=True,
              help="Compile the model with torch.compile (a CUDA option: on CPUs `mpo bench` "
                   "measured it slower).")
@click.pass_context
def train(
    ctx: click.Context, config: str, out_dir: str | None, data_dir: str | None, download: bool,
    device: str, fresh: bool, threads: int | None, precision: str, compile_model: bool,
) -> None:
    """Train the model described by CONFIG (a YAML file, or a recipe name such as `toy`).

    Resumes from OUT/state.pt when present (the same config is required). Recipes:
    jobs/recipes/*.yaml (toy, mnist-small, mnist-paper, mnist-rt-paper, cifar10-paper, ...).
    """
    from pathlib import Path

    from jobs.config import resolve_train_config

    cfg = resolve_train_config(config)  # torch-free: a mistake in CONFIG is refused at once
    if cfg.init is not None:  # fine-tuning: the parent is checked (dataset, weights) first
        from jobs.finetune import resolve_init

        cfg = resolve_init(cfg, source=config)
    from jobs.io import check_writable
    from jobs.training import resolve_device
    from jobs.training import train as run_training
    from orchestrator.console import make_console
    from orchestrator.resources import available_cpus, set_torch_threads

    set_torch_threads(threads or available_cpus())
    console = make_console()
    dev = resolve_device(device)
    model_id = cfg.model_id()
    out = check_writable(Path(out_dir) if out_dir else Path("runs") / "train" / model_id,
                         folder=True, what="--out")
    console.print(
        f"[bold]{cfg.label or model_id}[/bold]  model id [cyan]{model_id}[/cyan]  "
        f"{cfg.dataset.name} / {cfg.model.name} / strategy {cfg.strategy} "
        f"[{', '.join(cfg.families()) or 'clean'}]  device {dev}  -> {out}"
    )
    progress = progress_bars(console, info=True)
    set_resume_hint(ctx, f"every finished epoch is saved in {out}/state.pt; run the same command "
                    "again to continue from it")
    with progress:
        result = run_training(cfg, out, data_dir=data_dir, download=download, device=dev,
                              sync_every=10, resume=not fresh, precision=precision,
                              compile=compile_model, **_progress_callbacks(progress, cfg.epoch_count))
    _print_metrics(result, f"training of {cfg.label or model_id}", console)
