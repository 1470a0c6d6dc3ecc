"""``python -m dicom_node`` runs the same CLI as the ``dicom-node`` script."""

import sys

from dicom_node.cli import main

sys.exit(main())
