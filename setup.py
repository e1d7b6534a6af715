"""Builds aiobind's cffi extension at install time (setuptools reads the rest from pyproject)."""

from setuptools import setup

setup(cffi_modules=["src/aiobind/_ffi_build.py:ffibuilder"])
