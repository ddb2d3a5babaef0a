"""corral's tools, apart from the library: the ``corral`` command (``_cli``), the
demo scenarios (``_demo``), the benchmark harness (``_bench``) and the benchmarks
themselves (``benchmarks/``, shipped with the package so that ``corral bench`` works
after a plain ``pip install``). Nothing in the library imports from here.
"""
