"""Models mpo did not train: a PyTorch factory, a TorchScript file, or a RobustBench zoo entry.

An ``ExternalModel`` says where the model comes from and how it reads its inputs:

- ``factory: "package.module:function"`` (``factory_kwargs`` passed to it) builds an
  ``nn.Module``; ``weights`` (optional) is a file that ``torch.load(..., weights_only=True)``
  reads: a state dict, or a dict holding one under a common key (``state_dict``, ``model``, ...).
  The current directory is on the import path, as for ``python -m``;
- ``torchscript: FILE`` is read by ``torch.jit.load`` (its weights are inside);
- ``robustbench: NAME`` with ``threat_model: Linf | L2`` loads through the optional
  ``robustbench`` package (``pip install 'mpo[robustbench]'``) from ``model_dir`` in its layout
  (``DIR/cifar10/Linf/NAME.pt``), with its ``torch.load`` forced to ``weights_only=True``.

mpo's attacks work on inputs in [0, 1], where the suites' radii are stated. ``input_range``
(``[0, 1]`` or e.g. ``[0, 255]``) is the scale the model expects and ``mean``/``std`` its
per-channel normalisation in that scale: both go inside a wrapper (``InputScaling``), so the
model the attacks see takes [0, 1] inputs and an l_inf radius of 8/255 means 8/255 of the range.
Before any attack, a forward pass on two inputs checks the outputs are logits ``[2, classes]``.

Identity: the model id hashes the source (factory path and kwargs; the zoo name, threat model
and dataset), the weights' sha256 (a RobustBench entry names one published checkpoint, so its
file's digest is recorded but not part of the id) and the wrapper settings, never a path: the
same model has the same id on every machine. ``record`` is the config-like snapshot that
results metadata and ``manifest.json`` carry (``strategy: external``).
"""

from jobs.external.spec import (
    EXTERNAL_STRATEGY,
    ExternalModel,
    ExternalModelError,
    external_spec,
    parse_external,
)

__all__ = [
    "EXTERNAL_STRATEGY",
    "ExternalModel",
    "ExternalModelError",
    "external_spec",
    "parse_external",
]
