"""Fake modules for the packages diffusers v0.27.2 imports at import time but its model code never uses
(huggingface_hub, safetensors, accelerate, PIL, filelock, tqdm, importlib_metadata), so that make_sd_parity.py can
import UNet2DConditionModel and AutoencoderKL on a machine with only torch and numpy. Importing this module installs
them (a meta-path finder); every attribute of a fake module is a dummy class. Also reports a version for them to
diffusers' dependency check and gives torch 1.13 the few names diffusers looks up at import (torch.xpu, torch.mps).
`safetensors.torch.save_file` is left out on purpose: tools/safetensors_io.py then writes with its own writer.
"""
import importlib.abc
import importlib.machinery
import importlib.metadata
import sys
import types

STUB = ("huggingface_hub", "safetensors", "accelerate", "PIL", "filelock", "tqdm", "importlib_metadata")
VALUES = {"HF_HOME": "/tmp/hf-stub", "HF_HUB_CACHE": "/tmp/hf-stub/hub", "HUGGINGFACE_HUB_CACHE": "/tmp/hf-stub/hub",
          "HF_HUB_OFFLINE": True, "HF_HUB_DISABLE_TELEMETRY": True, "__version__": "99.0.0"}
ABSENT = {"save_file"}


class _Meta(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _attribute(name)


class _Dummy(metaclass=_Meta):
    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Dummy()

    def __getattr__(self, name):
        return _Dummy()


def _attribute(name):
    if name in VALUES:
        return VALUES[name]
    if name in ABSENT or name.startswith("__"):
        raise AttributeError(name)
    return _Meta(name, (_Dummy,), {})


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        parts = fullname.split(".")
        if parts[0] in STUB and parts[-1] not in ABSENT:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        m = types.ModuleType(spec.name)
        m.__path__ = []
        m.__getattr__ = _attribute
        return m

    def exec_module(self, module):
        pass


sys.meta_path.insert(0, _Finder())

_version = importlib.metadata.version
importlib.metadata.version = lambda name: "99.0.0" if name.replace("-", "_").split(".")[0] in STUB else _version(name)

import torch  # noqa: E402

for _name in ("xpu", "mps", "mtia"):
    if not hasattr(torch, _name):
        setattr(torch, _name, _Dummy())
