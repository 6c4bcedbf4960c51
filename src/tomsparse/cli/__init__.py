"""The command line: the only code that knows argparse.

``main`` builds one parser from the subcommand modules (``info``, ``tasks``, ``eval``,
``perplexity``, ``scores``, ``sweep``/``summarize``, ``run``, ``analyze``); each module turns its
parsed options into the library's typed configurations once and calls the library.
``options`` holds what several commands share (model and sweep options, list parsing, the
presets of ``tomsparse run``).
"""
