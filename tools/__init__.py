"""Measurement tools and the small helpers the entry points, the load harness and the tests share.

`tools.procs`, `tools.plotting` and `tools.markdown` import nothing of ours (the load harness
uses them); `tools.bench` and `tools.recall` measure the service's own scoring code.
"""
