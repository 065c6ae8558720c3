"""ppim's command lines, one module per tool, each with ``main(argv=None) -> int``; installed as the
ppim-* console scripts (setup.py) and wrapped by tools/*.py for a checkout:

    eval (ppim-eval)  convert (ppim-convert)  export (ppim-export)  benchmark (ppim-benchmark)
    predict (ppim-predict)  train (ppim-train)  visualize (ppim-visualize)
    make_token_labels (ppim-make-token-labels)

ppim.cli.common holds what they share: expected errors as one ``error:`` line and exit status 2.
"""
