from __future__ import annotations

import sys

from trial_worker.cli import main

sys.exit(main())
