from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="vfscreen",
    version="0.1.0",
    description="Screen CT scans for vertebral fractures: nnU-Net segmentation + SupCon Genant grading "
                "(Faint Features Tell, Wei et al. 2022) as a self-configuring pipeline",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["vfscreen", "vfscreen.*"]),
    package_data={"vfscreen": ["presets/*.json"]},
    install_requires=[
        "torch>=2.1",
        "nnunetv2>=2.5",
        "dynamic_network_architectures",
        "batchgenerators>=0.25",
        "batchgeneratorsv2",
        "SimpleITK>=2.2",
        "scipy",
        "pandas",
        "numpy",
        "scikit-learn",
        "matplotlib",
        "tqdm",
        "pyyaml",
        "nibabel",
    ],
    # benchmark only: TotalSegmentator's own height measurement side by side (vfscreen_benchmark morphometry)
    extras_require={"test": ["pytest>=7"], "totalsegmentator": ["totalsegmentator>=2.18"]},
    entry_points={
        "console_scripts": [
            "vfscreen_demo = vfscreen.demo:main",
            "vfscreen_generate_synthetic = vfscreen.phantom.cli:main",
            "vfscreen_plan_and_preprocess = vfscreen.experiment_planning.cli:main",
            "vfscreen_train = vfscreen.training.cli:main",
            "vfscreen_predict = vfscreen.inference.cli:main",
            "vfscreen_evaluate = vfscreen.evaluation.cli:main",
            "vfscreen_benchmark = vfscreen.evaluation.benchmark:main",
        ],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: MIT License",
        "Topic :: Scientific/Engineering :: Medical Science Apps.",
    ],
)
