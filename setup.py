"""normtrain: training and experiments for normalization research."""
from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
version = {}
exec((here / "normtrain" / "version.py").read_text(), version)

setup(
    name="normtrain",
    version=version["__version__"],
    description="Train any network with any normalization method of the papers, behind one flag; "
                "reproduce the papers' experiments with a verdict.",
    long_description=(here / "README.md").read_text() if (here / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["normtrain", "normtrain.*"]) + ["normtrain.recipes"],
    # The top-level recipes/ folder ships inside the package as normtrain/recipes.
    package_dir={"normtrain.recipes": "recipes"},
    package_data={"normtrain": ["data/*.npz"], "normtrain.recipes": ["*.yaml"]},
    install_requires=[
        "torch>=2.11",
        "torchvision>=0.26",
        "numpy",
        "pyyaml>=6",
        "tqdm>=4.60",
        "tensorboard>=2.14",
        "matplotlib>=3.7",
    ],
    extras_require={
        "dali": ["nvidia-dali-cuda130"],
        "timm": ["timm>=1.0"],
        "test": ["pytest>=8", "pytest-timeout", "hypothesis>=6.100", "nvidia-dali-cuda130", "timm>=1.0"],
    },
    entry_points={"console_scripts": ["normtrain=normtrain.__main__:run"]},
)
