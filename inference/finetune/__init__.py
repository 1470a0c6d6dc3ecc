"""Fine-tuning and export: labelled DICOM to a validated model package the node runs.

Needs the ``train`` extra (torch, torchvision, matplotlib); nothing else in
`inference` imports this subpackage, so the node runs without torch. The command
line reaches it as ``dicom-node finetune`` and ``dicom-node export``:

* `read_config` checks a training config (the ``model.toml`` sections of the
  package to produce plus ``[training]``);
* `finetune` trains with patient-level k-fold cross-validation, resumably, and
  writes the validation report;
* `export_package` writes the package (ONNX with a dynamic batch axis and the CAM
  feature map, ``model.toml`` with the validated thresholds) and checks PyTorch
  against ONNX Runtime;
* `evaluate_package` validates a package on an external labelled set exactly as the
  node runs it, into the same report.
"""

from inference.finetune.config import FinetuneConfig, read_config
from inference.finetune.data import LabelFileError
from inference.finetune.export import ExportError, ExportResult, export_package
from inference.finetune.external import ExternalResult, evaluate_package
from inference.finetune.networks import Backbone
from inference.finetune.run import RunSummary, finetune

__all__ = [
    "Backbone",
    "ExportError",
    "ExportResult",
    "ExternalResult",
    "FinetuneConfig",
    "LabelFileError",
    "RunSummary",
    "evaluate_package",
    "export_package",
    "finetune",
    "read_config",
]
