"""Modelling code for ``transformers`` (``trust_remote_code=True``), copied verbatim into every exported
folder by :func:`lightning_redllm.hf.export_hf`. These files import ``transformers`` and must not import
lightning_redllm: the exported folder stands alone. Nothing in the package imports them."""
