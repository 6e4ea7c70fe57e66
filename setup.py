"""The optional C extension; everything else is in pyproject.toml.

``optional=True``: without a C compiler the package installs anyway and ``_fastfbs``
uses its Python decoders.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "mafalda.mediasoup._cfastfbs",
            ["src/mafalda/mediasoup/_cfastfbs.c"],
            optional=True,
        )
    ]
)
