"""The command layer: everything ``python -m lightning_redllm <subcommand>`` runs.

* ``lightning_cli``  ``fit`` / ``validate`` / ``test`` / ``predict``: Lightning's CLI with recipe
  composition, run folders, device checks (:class:`RedLLMCLI`, :func:`run_lightning`)
* ``commands``       the other subcommands (``generate``, ``evaluate``, ``export``, ``plan``, ``recipes``,
  ``study`` ...): one ``<name>_main(argv)`` each, registered in ``COMMANDS`` -- add a subcommand here
* ``config_errors``  a bad recipe or flag as one line naming the file, key and value
* ``guard``          user errors as ``error: ...`` + exit status 1 instead of a traceback
* ``progress``       what a run prints while it trains (step progress, throughput, ETA)
* ``predictions``    where ``predict`` writes its results
* ``output``         a command's result: its table on stdout, its JSON with ``--out``
* ``lm_eval``        lm-eval's own CLI with our model registered (public: ``python -m lightning_redllm.lm_eval``)

Nothing below this layer imports it; the study is run from here by name.
"""
