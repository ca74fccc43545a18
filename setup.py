"""Builds gts_megatron and its C++/CUDA extension gts_megatron._C (csrc/): the C++ kernels
always, the CUDA kernels too when the torch it builds against has CUDA and nvcc is found."""
import os
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent


def extension_build():
    """(ext_modules, cmdclass) for csrc/, built against the installed torch."""
    from torch.utils import cpp_extension

    sources = ["csrc/ops.cpp", "csrc/checks.cpp", "csrc/cpu.cpp", "csrc/cpu_pool.cpp"]
    cxx = ["-O3", "-std=c++20"]
    with_cuda = (cpp_extension.CUDA_HOME is not None and __import__("torch").version.cuda is not None
                 and os.environ.get("GTS_BUILD_CUDA", "1") != "0")
    if with_cuda:
        # Hopper and Ampere by default; TORCH_CUDA_ARCH_LIST overrides, as for any torch extension
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        ext = cpp_extension.CUDAExtension(
            "gts_megatron._C", sources + ["csrc/cuda/kernels.cu", "csrc/cuda/bindings.cpp"],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-std=c++17"]})
    else:
        ext = cpp_extension.CppExtension("gts_megatron._C", sources, extra_compile_args={"cxx": cxx})
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=False)}


EXT_MODULES, CMDCLASS = extension_build()

# torch is installed before this package (the CPU build on machines without a GPU, so that pip
# does not pull the CUDA wheels); the pins below are the versions everything is tested with.
INSTALL_REQUIRES = [
    "torch==2.13.0",
    "megatron-core==0.16.1",
    "psutil>=5.9",
    "numpy>=1.26,<3",
    "sentencepiece==0.2.3",
    "protobuf>=4.21,<8",  # sentencepiece_model_pb2: the tokenizer is written without its training paths
    "ray[default]==2.60.0",
    "deepspeed==0.19.8",
    "pydantic>=2.7,<3",
    "PyYAML>=6.0",
    "tensorboard>=2.16",
    "tqdm>=4.66",
    "safetensors>=0.4",
    "tokenizers==0.23.3",  # reads Hugging Face tokenizer.json files
    "transformers==5.23.0",  # gts import-hf checks its conversion against transformers' logits
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
    package_data={"gts_megatron": ["configs/*.yaml", "configs/models/*.yaml", "configs/recipes/*.yaml"]},
    # the sbatch templates of `gts launch`, found there when the package is not run from a checkout
    data_files=[("share/gts_megatron/launchers/slurm", sorted(str(p) for p in Path("launchers/slurm").glob("*.sbatch")))],
    install_requires=INSTALL_REQUIRES,
    ext_modules=EXT_MODULES,
    cmdclass=CMDCLASS,
    extras_require={"dev": ["pytest>=8", "pytest-timeout>=2.3", "hypothesis>=6.100"]},
    entry_points={"console_scripts": ["gts=gts_megatron.cli:main"]},
)
