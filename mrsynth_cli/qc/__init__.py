"""Quality-control pictures and pages: PNG montages of volumes, per-subject HTML reports, an index."""

from mrsynth_cli.qc.montage import montage_image, write_montage
from mrsynth_cli.qc.report import SubjectPage, index_report, subject_report

__all__ = ["montage_image", "write_montage", "SubjectPage", "subject_report", "index_report"]
