"""Candidates of a release after scoring: one table of them, and the re-ranking that learns from labels.

``candidates`` joins a release's products into one row per scored spectrum (what the explorer pages
through and the re-ranking learns on); ``interest`` is the model of user interest (Astronomaly's
human-in-the-loop idea); ``inspection`` simulates an astronomer labelling, to measure what labels buy.
Plain numpy, polars and scikit-learn, no Dagster.
"""
