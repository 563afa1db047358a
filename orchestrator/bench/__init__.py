"""The measurements of ``mpo bench`` (the command itself, its table and its JSON file:
``orchestrator.commands.bench``): speed figures measured as ratios, side by side, in one process.

Every figure is a ratio of two timings taken in the same run, interleaved, with its spread and
the absolute times (``figures``). The groups, one module each:

1. ``attack_cost``: a k-step attack / k plain forward+backward passes on perturbed inputs
   (1.0 is the physical limit), at k = 10 and 20;
2. ``peers``: torchattacks and foolbox / ours, on the same model, batch, budget and steps;
3. ``execution``: how the models run: channels-last / contiguous, torch.compile / eager,
   bf16 autocast / fp32;
4. ``training_cost``: a training step per strategy / the passes it counted (each at the cost of
   a lone pass), and each strategy's step / Adv_inf's;
5. ``sweep_overhead``: a Ray Tune sweep of trivial trials / the same work in one process, and
   the evaluation fan-out with 1 vs 2 workers;
6. ``gpu``: the paper recipes' training throughput (MNIST CNN, WRN-32-10) on the device and the
   device hours ``paper-grid`` projects from it: on a GPU, or with ``mpo bench --projection``
   (the GPU script: groups 1-3 and 6 on the device).

``workload`` holds the sizes (``Settings``) and the model and batch groups 1-4 run on; ``run``
measures every group and returns the report. A figure that cannot be measured (an optional peer
not installed, no GPU, no data) is kept with status ``skipped`` and the reason; one that fails
is kept with status ``error`` and the message.
"""
