"""Importers: the field's model formats turned into packages the node runs.

Needs the ``import`` extra (monai, nnunetv2, dynamic-network-architectures, torch);
nothing else in `inference` imports this subpackage, so the node runs imported
packages on ONNX Runtime without them. ``dicom-node import-model`` reaches it:

* `import_monai_bundle` maps a MONAI bundle's inference config (transforms,
  sliding-window inferer, post-transforms) and metadata onto a 3D package and
  exports its network;
* `import_nnunet` maps an nnU-Net v2 result (plans, dataset, folds) onto a package
  whose folds the node ensembles;
* `read_label_map` reads the optional file giving labels their coded concepts.

Both take `ImportOptions` (labels file, overrides, permissions) and return an
`ImportResult`. Whatever cannot be mapped is an `ImportModelError` naming the file
and key.
"""

from inference.importers.errors import ImportModelError
from inference.importers.labels import read_label_map
from inference.importers.monai_bundle import import_monai_bundle
from inference.importers.nnunet import import_nnunet
from inference.importers.package_writer import ImportOptions, ImportResult

__all__ = [
    "ImportModelError",
    "ImportOptions",
    "ImportResult",
    "import_monai_bundle",
    "import_nnunet",
    "read_label_map",
]
