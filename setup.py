"""vlm: video-language models in JAX/Flax (VATT, TubeViT, SViTT, HierVL, TW-BERT)."""
import setuptools

setuptools.setup(
    name="vlm",
    version="0.1.0",
    description="JAX/Flax, TPU-first training codebase for video-language models.",
    packages=setuptools.find_packages(include=["vlm", "vlm.*"]),
    python_requires=">=3.11",  # jax 0.10.2 and libtpu 0.0.42 declare Requires-Python >=3.11
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "tensorflow>=2.21,<2.30",
        "tensorflow-datasets>=4.9.10",
        "tensorflow-text>=2.21,<2.30",
        "ml-collections>=1.1.0",
        "clu>=0.0.12",
        "chex>=0.1.92",
        "tensorboard>=2.21",
        "einops>=0.8",
        "numpy>=1.26",
        "scipy>=1.11",
        # The fast malloc the entry points preload (vlm/allocator.py); wheels exist for x86-64 Linux.
        "tbb>=2021.10; platform_system == 'Linux' and platform_machine == 'x86_64'",
    ],
    extras_require={
        # PyAV decodes mp4/avi/mpg/webm for the record writer and the data benchmark only.
        "media": ["av>=18.1", "soundfile>=0.14"],
        # Parity tests run HF transformers' PyTorch models (random weights saved in the test) against ours.
        "parity": ["torch>=2.2", "transformers>=4.40", "safetensors>=0.4"],
        "test": ["pytest>=8", "pytest-xdist>=3", "nbmake>=1.5", "av>=18.1",
                 "soundfile>=0.14", "safetensors>=0.4", "matplotlib>=3.8",
                 "torch>=2.2", "transformers>=4.40"],
        "tpu": ["jax[tpu]>=0.10.2"],
        "gpu": ["jax[cuda12]>=0.10.2"],
        "colab": ["matplotlib>=3.8"],
    },
)
