"""Install the aml package: pip install -e ."""

from setuptools import find_packages, setup

setup(
    name="aml",
    version="0.1.0",
    description="Asymmetric metric learning for image retrieval (Budnik & Avrithis, CVPR 2021)",
    packages=find_packages(include=["aml", "aml.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.11", "torchvision>=0.26", "numpy", "scipy", "pillow", "tqdm"],
    extras_require={"timm": ["timm"], "plots": ["matplotlib"], "search": ["faiss-cpu"],
                    "export": ["onnx", "onnxruntime"],
                    "test": ["pytest", "pytest-xdist", "pytest-timeout", "matplotlib", "faiss-cpu", "onnx", "onnxruntime"]},
)
