"""The one base class of every error a user's input can cause.

A grid, config, suite or attack spec that does not validate, a checkpoint or data root that is
missing or corrupt, a run folder that is not one, a missing optional package, a resource request
the cluster cannot meet, a changed grid on resume: each raises a subclass of ``MpoError`` whose
message names the file or field, the value, and what is allowed. The ``mpo`` command line turns
every ``MpoError``, in one place (``orchestrator.cli``), into a short message on stderr and a
non-zero exit; ``--debug`` (or ``MPO_DEBUG=1``) shows the traceback instead.

A subclass exists only where code catches it by name (``ConfigError``, ``GridError``,
``DataError``, ``AttackSpecError``, ``ExternalModelError``, ``SchemaVersionError``,
``RunFolderError``); every other user error is a plain ``MpoError``. Errors that are bugs (an
attack breaking its own constraint, ``AttackConstraintError``) are not ``MpoError``s: they keep
their traceback.
"""

from __future__ import annotations


class MpoError(Exception):
    """An error caused by the user's input; its message is the whole story (no traceback)."""


class ConfigError(MpoError, ValueError):
    """An input that does not validate: a training config, a suite, a model's settings, a
    device; the message names the file (when there is one), the field and the value."""
