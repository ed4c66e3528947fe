from setuptools import setup

setup(
    name="metanet",
    version="0.1.0",
    description="Plugin-based neural architecture search for vision backbones (INTERN's MetaNet/UniNet space on NNI 3.0)",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    # the three sibling folders are mapped into the metanet namespace; metanet/ holds one package per capability
    packages=["metanet", "metanet.plugin", "metanet.data", "metanet.train", "metanet.evaluate", "metanet.runs",
              "metanet.search", "metanet.export", "metanet.cli", "metanet.plugins", "metanet.plugins.stages",
              "metanet.search_spaces", "metanet.kernels"],
    package_dir={
        "metanet": "metanet",
        "metanet.plugins": "plugins",
        "metanet.plugins.stages": "plugins/stages",
        "metanet.search_spaces": "search_spaces",
        "metanet.kernels": "kernels",
    },
    install_requires=[
        "torch>=2.1",
        "timm>=1.0",
        "nni==3.0",
        "pytorch-lightning",  # NNI 3.0's NAS package imports it
        "fvcore",
        "einops",
        "pluggy>=1.0",
        "click>=8.0",
        "scikit-learn",
        "scipy",  # rank correlations of proxy-check
        "setuptools<82",  # NNI 3.0's remote trial runner imports pkg_resources (gone in 82): trials hang without
        "matplotlib",
        "pyyaml",
        "tqdm",
        "safetensors",
        "paramiko",  # trained weights of remote trials come back over SFTP (NNI's remote service shares no files)
    ],
    extras_require={
        # NNI's PolicyBasedRL (PPO) also needs gym==0.26.2 and tianshou==0.4.11, installed with --no-deps
        # (tianshou pins protobuf 3.19, which current onnx and tensorboard reject): see the Makefile.
        "rl": ["gym_notices", "tensorboard", "numba", "h5py"],
        "export": ["onnx", "onnxruntime", "safetensors"],
        # datasets timm reads from disk: Hugging Face datasets (hfds/) and WebDataset shards (wds/)
        "hf": ["datasets"],
        "wds": ["webdataset"],
        "docs": ["mkdocs>=1.6", "mkdocs-material", "mkdocstrings[python]", "mkdocs-click"],
        "test": ["pytest>=7", "pytest-xdist", "selenium", "gym_notices", "tensorboard", "numba", "h5py", "onnx", "onnxruntime",
                 "safetensors", "datasets", "webdataset",
                 # the docs are built by `make test` too
                 "mkdocs>=1.6", "mkdocs-material", "mkdocstrings[python]", "mkdocs-click"],
    },
    entry_points={
        "console_scripts": ["metanet=metanet.cli:main"],
    },
)
