"""The Tune trainable of a sweep as a class whose actors say which model they train.

Tune runs a function trainable as an actor of a class it makes, ``ImplicitFunc``, whose
``__repr__`` is the function's name: on the dashboard every trial was ``ImplicitFunc`` /
``run_trial``. ``MpoTrial`` is exactly that class (``ray.tune``'s ``wrap_function`` of
``orchestrator.trainable.run_trial``: the same training loop, session, checkpoints, restarts
and resume) with a name of its own and a ``__repr__`` that gives the trial's model label and
id. Ray records an actor's repr once its constructor has run (the trial's config is set by
then) and shows it on the Actors page and in the names of the actor's method calls.

Its placement group comes from the trial's config (``settings.bundles``), not from
``tune.with_resources``: that wraps a class in a subclass of its own, and the dashboard would
show ``with_resources.<locals>.ResourceTrainable`` as every trial's class.
"""

from __future__ import annotations

from typing import Any

from ray.tune import PlacementGroupFactory
from ray.tune.trainable.function_trainable import wrap_function

from orchestrator.naming import trial_repr
from orchestrator.trainable import run_trial


class MpoTrial(wrap_function(run_trial)):  # type: ignore[misc]
    """One mpo trial (one model): ``run_trial`` as a Tune trainable, named after its model."""

    @classmethod
    def default_resource_request(cls, config: dict[str, Any]) -> PlacementGroupFactory | None:
        """The trial's placement group: ``config["settings"]["bundles"]`` (bundle 0 for the
        trial, the others for its evaluation tasks; ``Resources.bundles``)."""
        bundles = (config.get("settings") or {}).get("bundles")
        return PlacementGroupFactory(bundles) if bundles else None

    def __repr__(self) -> str:
        # getattr: repr may be asked for before Trainable.__init__ has set the config
        trial = (getattr(self, "config", None) or {}).get("trial") or {}
        return trial_repr(str(trial.get("label", "?")), str(trial.get("model_id", "?")))
