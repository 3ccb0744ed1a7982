"""Shared test fixtures."""
from pathlib import Path

import pytest
import torch

CIFAR_MINI = Path(__file__).parent / "fixtures" / "cifar10-mini"


@pytest.fixture(scope="session")
def cifar_mini_images() -> torch.Tensor:
    """The 400 real CIFAR-10 training images of the fixture as uint8 400 x 3 x 32 x 32 (CPU).

    Decoded here with pyarrow + torchvision, independently of trainables.data."""
    import warnings

    import pyarrow.parquet as pq
    from torchvision.io import ImageReadMode, decode_image

    table = pq.read_table(CIFAR_MINI / "train.parquet", columns=["img"])
    with warnings.catch_warnings():  # torchvision 0.29 deprecates its codecs (TorchCodec not installed)
        warnings.simplefilter("ignore", DeprecationWarning)
        images = [decode_image(torch.frombuffer(bytearray(cell["bytes"]), dtype=torch.uint8),
                               mode=ImageReadMode.RGB) for cell in table.column("img").to_pylist()]
    return torch.stack(images)
