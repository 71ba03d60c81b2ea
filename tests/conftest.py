"""Shared pytest configuration: hypothesis profiles and the import path of the test helpers.

Profiles (choose with the HYPOTHESIS_PROFILE environment variable; default "ci"):
  ci        deterministic (derandomized), the example counts the suite is tuned for, no database
  dev       quick local iteration: a quarter of the examples, random, with the example database
  thorough  twenty times the examples, random: for soak runs before a release
Tests ask for their example count through qk_support.examples(n), which scales n per profile.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hypothesis import HealthCheck, settings

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))  # qk_support.py, imported by the test modules

_COMMON = dict(
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("ci", derandomize=True, database=None, max_examples=50, **_COMMON)
settings.register_profile("dev", max_examples=12, **_COMMON)
settings.register_profile("thorough", max_examples=1000, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
