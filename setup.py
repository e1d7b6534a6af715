"""Builds aiobind's cffi extension at install time (setuptools reads the rest from pyproject)."""

from setuptools import setup

setup(cffi_modules=["aiobind/_build.py:ffibuilder"])
