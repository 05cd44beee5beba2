"""Sub-commands of ``signaltwin``: one module each, discovered by :mod:`controller.cli`."""
