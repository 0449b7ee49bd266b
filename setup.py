"""Packaging for cryonb: metadata from settings.ini, version from cryonb/__init__.py."""
import re
from configparser import ConfigParser
from pathlib import Path

import setuptools

here = Path(__file__).parent
cfg = ConfigParser(delimiters=["="])
cfg.read(here / "settings.ini", encoding="utf-8")
c = cfg["DEFAULT"]
version = re.search(r'^__version__\s*=\s*"([^"]+)"', (here / "cryonb" / "__init__.py").read_text(), re.M).group(1)

licenses = {"apache2": ("Apache Software License 2.0", "OSI Approved :: Apache Software License")}
lic = licenses[c["license"]]
statuses = ["1 - Planning", "2 - Pre-Alpha", "3 - Alpha", "4 - Beta", "5 - Production/Stable"]

setuptools.setup(
    name=c["lib_name"],
    version=version,
    description=c["description"],
    long_description=(here / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    keywords=c["keywords"].split(),
    author=c["author"],
    author_email=c["author_email"],
    license=lic[0],
    classifiers=[
        "Development Status :: " + statuses[int(c["status"])],
        "Intended Audience :: Science/Research",
        "Topic :: Scientific/Engineering :: Bio-Informatics",
        "License :: " + lic[1],
        "Programming Language :: Python :: 3",
    ],
    python_requires=">=" + c["min_python"],
    packages=setuptools.find_packages(include=["cryonb", "cryonb.*"]),
    include_package_data=True,
    package_data={"cryonb": ["data/*", "data/**/*"]},
    install_requires=c["requirements"].split(),
    extras_require={"dev": c["dev_requirements"].split()},
    entry_points={
        "console_scripts": c["console_scripts"].split(),
        "nbdev": [f'{c["lib_path"]}={c["lib_path"]}._modidx:d'],
    },
    zip_safe=False,
)
