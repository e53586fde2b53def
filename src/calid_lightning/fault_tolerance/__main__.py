"""``python -m calid_lightning.fault_tolerance resume-path ...`` (see :func:`resume.main`)."""

import sys

from calid_lightning.fault_tolerance.resume import main

sys.exit(main())
