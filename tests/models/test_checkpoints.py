"""One loader for every model: the class named in the file (or recognised from its weights), checked."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import LightningModule

from calid_lightning.errors import DataError
from calid_lightning.models.calid_spatial import CaLIDSpatial
from calid_lightning.models.checkpoints import MODEL_CLASS_KEY, NamedCheckpoint, checkpoint_class, load_model
from calid_lightning.models.pixel_diffusion import PixelSpatial
from calid_lightning.models.segmenter import SegmenterModule
from calid_lightning.models.vae import VAEModule
from checkpoints import TINY_UNET, save_checkpoint, tiny_vae_checkpoint


def named(module: LightningModule, path: Path) -> Path:
    """``module`` saved with its Lightning checkpoint hook (the class name recorded)."""
    checkpoint = torch.load(save_checkpoint(module, path), weights_only=True)
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("kinds")
    vae = tiny_vae_checkpoint(folder / "vae.ckpt")
    torch.manual_seed(0)
    return {
        "vae": vae,
        "segmenter": named(SegmenterModule(channels=(4, 8), strides=(2,)), folder / "segmenter.ckpt"),
        "spatial": named(CaLIDSpatial(vae_checkpoint=str(vae), **TINY_UNET), folder / "spatial.ckpt"),
        "pixel": named(PixelSpatial(**TINY_UNET), folder / "pixel.ckpt"),
    }


CLASSES = {"vae": VAEModule, "segmenter": SegmenterModule, "spatial": CaLIDSpatial, "pixel": PixelSpatial}


@pytest.mark.parametrize("kind", CLASSES)
def test_every_kind_names_its_class_and_loads_frozen(files: dict[str, Path], kind: str) -> None:
    checkpoint = torch.load(files[kind], weights_only=True)
    cls = CLASSES[kind]
    assert kind == "vae" or checkpoint[MODEL_CLASS_KEY] == f"{cls.__module__}.{cls.__qualname__}"
    assert issubclass(cls, NamedCheckpoint)
    model = load_model(files[kind])
    assert type(model) is cls and not model.training and not any(p.requires_grad for p in model.parameters())
    for key, value in checkpoint["state_dict"].items():
        torch.testing.assert_close(model.state_dict()[key], value)


@pytest.mark.parametrize("kind", CLASSES)
def test_checkpoints_without_the_class_entry_are_recognised(files: dict[str, Path], kind: str) -> None:
    checkpoint = torch.load(files[kind], weights_only=True)
    checkpoint.pop(MODEL_CLASS_KEY, None)
    assert checkpoint_class(checkpoint, files[kind]) is CLASSES[kind]


@pytest.mark.parametrize("kind", CLASSES)
def test_another_kind_is_refused_naming_both(files: dict[str, Path], kind: str) -> None:
    other = VAEModule if kind != "vae" else SegmenterModule
    found, wanted = CLASSES[kind].__name__, other.__name__
    with pytest.raises(
        DataError, match=f"{files[kind].name}: holds a {found} checkpoint, expected a {wanted}"
    ):
        load_model(files[kind], other)
    assert isinstance(load_model(files[kind], (other, CLASSES[kind])), CLASSES[kind])


def test_a_vae_without_its_scale_factor_is_refused(tmp_path: Path) -> None:
    path = save_checkpoint(
        VAEModule(channels=(8, 8, 8), latent_channels=4, norm_num_groups=4), tmp_path / "v.ckpt"
    )
    with pytest.raises(DataError, match=r"v\.ckpt: the latent scale_factor was never computed"):
        load_model(path, VAEModule)


@pytest.mark.parametrize(
    ("checkpoint", "problem"),
    [
        ({"state_dict": {"weight": torch.zeros(1)}}, "not a calid-lightning checkpoint"),
        (
            {MODEL_CLASS_KEY: "os.system", "state_dict": {}},
            "names 'os.system', which is not a calid_lightning",
        ),
        ({MODEL_CLASS_KEY: "calid_lightning.models.vae.nothing", "state_dict": {}}, "which is not a calid"),
        ({MODEL_CLASS_KEY: "calid_lightning.models.calid_2dt.CaLID2DT", "state_dict": {}}, "retired"),
    ],
    ids=["unknown-weights", "foreign-class", "missing-class", "retired-2dt"],
)
def test_foreign_checkpoints_are_one_line_errors(checkpoint, problem, tmp_path: Path) -> None:
    path = tmp_path / "x.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(DataError, match=problem) as exc:
        load_model(path)
    assert str(exc.value).startswith(f"{path}: ") and "\n" not in str(exc.value)
