"""Only what setup.cfg cannot say: the compiled fan-out extension (sfu/fastpath/_build.py),
built at `pip install` when a C compiler and Python's headers are there. Without them the
install still succeeds and keyroom builds it on first use or runs the pure-Python path
(sfu/fastpath/loader.py)."""

from setuptools import setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    def finalize_options(self) -> None:
        super().finalize_options()
        for extension in self.extensions:
            extension.optional = True  # a failed compile is a warning, not a failed install


setup(cmdclass={"build_ext": OptionalBuildExt}, cffi_modules=["sfu/fastpath/_build.py:ffibuilder"])
