"""Build the optional C fast path of the queues (corral._core._speedups).

corral works without it: when there is no C compiler, or on a platform other than
Linux, or with CORRAL_NO_EXTENSIONS=1 in the environment, the build leaves it out
and the queues use their pure-Python paths, which speak the same protocol.
"""

import os
import sys

from setuptools import Extension, setup

ext_modules = []
if sys.platform.startswith("linux") and not os.environ.get("CORRAL_NO_EXTENSIONS"):
    ext_modules.append(
        Extension(
            "corral._core._speedups",
            ["src/corral/_core/_speedups.c"],
            extra_compile_args=["-O2", "-std=gnu11"],
            optional=True,  # a failed build is a warning, not an error
        )
    )

setup(ext_modules=ext_modules)
