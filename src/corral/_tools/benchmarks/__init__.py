"""The benchmark files that ``corral bench`` runs, each in a fresh interpreter
(see ``corral._tools._bench``): ``<name>_bench.py`` defines ``run(quick) -> list[Row]``."""
