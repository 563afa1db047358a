"""The Tune trainable of a sweep as a class whose actors say which model they train.

Tune runs a function trainable as an actor of a class it makes, ``ImplicitFunc``, whose
``__repr__`` is the function's name: on the dashboard every trial was ``ImplicitFunc`` /
``run_trial``. ``MpoTrial`` is exactly that class (``ray.tune``'s ``wrap_function`` of
``orchestrator.trainable.run_trial``: the same training loop, session, checkpoints, restarts
and resume) with a name of its own and a ``__repr__`` that gives the trial's model label and
id. Ray records an actor's repr once its constructor has run (the trial's config is set by
then) and shows it on the Actors page and in the names of the actor's method calls.

The class is made per sweep (``trial_class``): each trial's payload travels through the object
store (``tune.with_parameters``), its Tune config names only the model. Its placement group
comes from the trial's config (``settings.bundles``), not from ``tune.with_resources``: that
wraps a class in a subclass of its own, and the dashboard would show
``with_resources.<locals>.ResourceTrainable`` as every trial's class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ray import tune
from ray.tune import PlacementGroupFactory
from ray.tune.trainable.function_trainable import wrap_function

from orchestrator.naming import trial_repr
from orchestrator.trainable import run_trial

if TYPE_CHECKING:
    from orchestrator.plan import TrialPayload


def trial_class(payloads: dict[str, TrialPayload]) -> type:
    """``MpoTrial``: ``run_trial`` with the sweep's payloads, as a Tune trainable class whose
    actors are named after their model (call it once Ray is initialised: the payloads go to the
    object store)."""
    labels = {mid: p.label for mid, p in payloads.items()}
    base = wrap_function(tune.with_parameters(run_trial, payloads=payloads))

    class MpoTrial(base):  # type: ignore[misc, valid-type]
        """One mpo trial (one model): ``run_trial`` as a Tune trainable, named after its model."""

        @classmethod
        def default_resource_request(cls, config: dict[str, Any]) -> PlacementGroupFactory | None:
            """The trial's placement group: ``config["settings"]["bundles"]`` (bundle 0 for the
            trial, the others for its evaluation tasks; ``Resources.bundles``)."""
            bundles = (config.get("settings") or {}).get("bundles")
            return PlacementGroupFactory(bundles) if bundles else None

        def __repr__(self) -> str:
            # getattr: repr may be asked for before Trainable.__init__ has set the config
            mid = str((getattr(self, "config", None) or {}).get("model_id", "?"))
            return trial_repr(labels.get(mid, "?"), mid)

    MpoTrial.__qualname__ = "MpoTrial"  # the dashboard names the actors' class by it
    return MpoTrial
