"""Diagnostics: the doctor's rules over a run's metrics, with findings and suggested config changes."""

from yololab.diagnostics.doctor import (
    RULES,
    DoctorConfig,
    DoctorInputError,
    Finding,
    diagnose,
    diagnose_run,
    read_run,
)

__all__ = ["RULES", "DoctorConfig", "DoctorInputError", "Finding", "diagnose", "diagnose_run", "read_run"]
