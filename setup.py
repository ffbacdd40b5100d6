"""Build of the optional compiled kernels (metadata lives in pyproject.toml).

The library is a plain C ABI shared object loaded with ctypes (``psconv/kernels/binding.py``): no
Python or torch headers are needed, so it builds in pip's isolated build environment. It is
compiled for baseline x86-64; the AVX-512 code is selected at run time (target pragmas plus
``__builtin_cpu_supports``), so one build runs on any machine. When the compiler is missing
or the build fails, installation still succeeds and psconv uses its reference path.
"""

from __future__ import annotations

import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

SOURCES = [
    "csrc/dispatch.cpp",
    "csrc/kernels_generic.cpp",
    "csrc/kernels_avx512.cpp",
    "csrc/kernels_avx2.cpp",
    "csrc/kernels_neon.cpp",
]


class OptionalBuildExt(build_ext):
    """build_ext that warns instead of failing, and links the library without Python."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any build problem must not break install
            self._warn(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            self._warn(exc)

    def copy_extensions_to_source(self) -> None:
        # Write the in-place copy under a temporary name and rename it: a running process
        # that has the old library mapped keeps its inode instead of seeing it truncated.
        import os
        import shutil

        build_py = self.get_finalized_command("build_py")
        for ext in self.extensions:
            fullname = self.get_ext_fullname(ext.name)
            filename = self.get_ext_filename(fullname)
            src = os.path.join(self.build_lib, filename)
            if not os.path.exists(src):
                continue  # the build failed and was reported
            modpath = fullname.split(".")
            package_dir = build_py.get_package_dir(".".join(modpath[:-1]))
            dst = os.path.join(package_dir, os.path.basename(filename))
            tmp = dst + ".tmp"
            shutil.copyfile(src, tmp)
            shutil.copymode(src, tmp)
            os.replace(tmp, dst)

    def get_export_symbols(self, ext: Extension) -> list[str]:
        # Not a Python module: there is no PyInit_ symbol to export.
        return []

    @staticmethod
    def _warn(exc: BaseException) -> None:
        print(
            "WARNING: psconv's compiled kernels could not be built "
            f"({type(exc).__name__}: {exc}); psconv will use its slower reference path.",
            file=sys.stderr,
        )


ext = Extension(
    "psconv.kernels._psconv_kernels",
    sources=SOURCES,
    depends=[
        "csrc/psconv_kernels.h",
        "csrc/kernel_body.inc",
        "csrc/kernel_conv.inc",
        "csrc/kernel_small.inc",
        "csrc/kernel_gradw.inc",
        "csrc/kernel_gradw_input.inc",
    ],
    include_dirs=["csrc"],
    language="c++",
    extra_compile_args=[
        "-O3",
        "-std=c++17",
        "-fopenmp",
        "-fno-math-errno",
        "-g0",
        "-Wno-maybe-uninitialized",
        "-Wno-psabi",  # 64-byte vectors pass only between inline functions of one file
    ],
    # libgomp.so.1 resolves to the copy torch has already loaded: one shared thread pool.
    extra_link_args=["-fopenmp"],
)

setup(ext_modules=[ext], cmdclass={"build_ext": OptionalBuildExt})
