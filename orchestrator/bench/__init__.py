"""The measurements of ``mpo bench`` (the command itself, its table and its JSON file:
``orchestrator.commands.bench``): speed figures measured as ratios, side by side, in one process.

Every figure is a ratio of two timings taken in the same run, interleaved, with its spread and
the absolute times (``figures``). The groups, one module each:

1. ``attack_cost``: a k-step attack / k plain forward+backward passes (1.0 is the physical limit);
2. ``peers``: torchattacks and foolbox / ours, on the same model, batch, budget and steps;
3. ``training_cost``: a training step per strategy / the ideal number of ``nat`` steps;
4. ``sweep_overhead``: a Ray Tune sweep of trivial trials / the same work in one process, and
   the evaluation fan-out with 1 vs 2 workers;
5. ``gpu``: with CUDA, groups 1-3 on the GPU, training throughput of the paper's recipes and the
   GPU hours ``paper-grid`` projects from it.

``workload`` holds the sizes (``Settings``) and the model and batch groups 1-3 run on; ``run``
measures every group and returns the report. A figure that cannot be measured (an optional peer
not installed, no GPU, no data) is kept with status ``skipped`` and the reason; one that fails
is kept with status ``error`` and the message.
"""
