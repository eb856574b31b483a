"""Results pages: each module here turns raw files of ``benchmarks/results/`` into Markdown.

A page module exposes ``PAGES: dict[str, Callable[[Path], str]]``: the page's file name under
``docs/results/`` and a function of the results folder that returns the page's text.
``python benchmarks/report.py`` writes every page; ``--check`` fails when a page on disk differs.
"""
