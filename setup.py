"""Builds gts_megatron (and, once csrc/ has sources, its C++/CUDA extension)."""
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent

# torch is installed before this package (the CPU build on machines without a GPU, so that pip
# does not pull the CUDA wheels); the pins below are the versions everything is tested with.
INSTALL_REQUIRES = [
    "torch==2.13.0",
    "megatron-core==0.16.1",
    "psutil>=5.9",
    "numpy>=1.26,<3",
    "sentencepiece==0.2.3",
    "ray[default]==2.60.0",
    "deepspeed==0.19.8",
    "pydantic>=2.7,<3",
    "PyYAML>=6.0",
    "tensorboard>=2.16",
    "tqdm>=4.66",
    "safetensors>=0.4",
    "tokenizers==0.23.3",  # reads Hugging Face tokenizer.json files
    "pycountry==26.2.16",  # ISO 639 language codes for corpus file names
    "scipy==1.17.1",  # hierarchical clustering of languages
    "matplotlib==3.11.2",  # the plan's figures
]

setup(
    name="gts_megatron",
    version="0.1.0",
    description="Group-then-Scale multilingual mixture-of-experts on Megatron-Core",
    long_description=(ROOT / "README.md").read_text() if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["gts_megatron", "gts_megatron.*"]),
    package_data={"gts_megatron": ["configs/*.yaml", "configs/models/*.yaml"]},
    install_requires=INSTALL_REQUIRES,
    extras_require={"dev": ["pytest>=8", "pytest-timeout>=2.3"]},
    entry_points={"console_scripts": ["gts=gts_megatron.cli:main"]},
)
