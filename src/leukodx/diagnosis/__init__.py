"""Case-level diagnosis: one case of cell images or smear fields -> results, summary, flags, report.

The top of the analysis stack: it runs the image classifiers (``leukodx.inference``) and the
whole-smear pipeline (``leukodx.smear``) and never is imported by them.
"""

from leukodx.diagnosis.case import diagnose, write_case_outputs

__all__ = ["diagnose", "write_case_outputs"]
