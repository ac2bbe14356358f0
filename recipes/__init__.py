"""The YAML recipes, installed with the package as ``lightning_redllm.recipes``.

They live at the top of the repository (``recipes/``) and are mapped into the package by
``pyproject.toml`` (``package-dir``), so an installed user finds them too: ``--config
recipes/stage/pretrain.yaml`` (or ``--config stage/pretrain``) resolves to this folder when no such
file exists in the working directory. ``python -m lightning_redllm recipes`` lists them.
"""
