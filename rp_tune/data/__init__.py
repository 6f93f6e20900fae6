"""Datasets: CIFAR-10/100 and SVHN through torchvision, image folders, and synthetic data.

Small datasets (32x32) are read once through torchvision (download under a file lock, so the
trials sharing a node fetch once) and kept as uint8 tensors on the trial's device for the whole
trial; random crop (zero pad 4), horizontal flip and the conversion to [0, 1] pixels run on
that device, batch by batch, with no DataLoader and no host sync. Normalisation is applied by
`Normalize` right before the model, so attacks (FGSM) can perturb pixels.

Image folders (ImageNet, ImageNet-O) go through torchvision `ImageFolder` + DataLoader workers.

Validation: the last `val_fraction` of the training set (CIFAR: 45k/5k), no augmentation.
Batches of an epoch are a pure function of (seed, epoch, rank), so a resumed trial sees exactly
the batches an unbroken one would.

Modules, lowest first: `formats` (the files on disk and torchvision's readers), `roots` (where
a data set lives, the node cache of a URI root), `identity` (what a trial trained on),
`loaders` (device-resident arrays, image folders), `preflight` (a sweep's data checked before
anything starts), `prepare` (`python -m rp_tune.data`). The names below are the package's API.
"""

from rp_tune.data.formats import (
    MANIFEST,
    STATS,
    TINY,
    TINY_CACHE,
    DataError,
    DataRootUnreachable,
    write_cifar_batches,
    write_svhn_split,
)
from rp_tune.data.identity import dataset_record, integrity_manifest, manifest_digest
from rp_tune.data.loaders import (
    ArraySplits,
    DeviceLoader,
    Normalize,
    augment,
    image_folder,
    imagenet_loaders,
    load_arrays,
    read_split,
    synthetic_arrays,
)
from rp_tune.data.preflight import Need, ensure_dataset, ensure_datasets, needed_datasets
from rp_tune.data.prepare import main, prepare_from_folder
from rp_tune.data.roots import (
    COMPLETE,
    DATA_CACHE_ENV,
    DOWNLOADABLE,
    ENTRIES,
    LAYOUTS,
    absolute_data_root,
    data_cache,
    dataset_error,
    local_data_root,
)

__all__ = [
    "COMPLETE",
    "DATA_CACHE_ENV",
    "DOWNLOADABLE",
    "ENTRIES",
    "LAYOUTS",
    "MANIFEST",
    "STATS",
    "TINY",
    "TINY_CACHE",
    "ArraySplits",
    "DataError",
    "DataRootUnreachable",
    "DeviceLoader",
    "Need",
    "Normalize",
    "absolute_data_root",
    "augment",
    "data_cache",
    "dataset_error",
    "dataset_record",
    "ensure_dataset",
    "ensure_datasets",
    "image_folder",
    "imagenet_loaders",
    "integrity_manifest",
    "load_arrays",
    "local_data_root",
    "main",
    "manifest_digest",
    "needed_datasets",
    "prepare_from_folder",
    "read_split",
    "synthetic_arrays",
    "write_cifar_batches",
    "write_svhn_split",
]
