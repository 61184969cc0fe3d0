"""A physically grounded multi-contrast brain MRI phantom.

Anatomy from the MNI ICBM152 2009a tissue maps (packaged, down-sampled; see ``data/README.md``)
warped per subject; skull and scalp; tumour or MS lesions; a branching arterial tree; literature
T1/T2/PD at 1.5 and 3 T; spin-echo, inversion-recovery and gradient-echo/inflow signal equations;
partial volume, bias field and Rician noise. Output is a BIDS dataset with ground truth.

Public API:

- :func:`simulate_dataset` writes ``n_subjects`` subjects to a BIDS folder and returns their folders;
- :func:`simulate_subject` simulates one subject in memory (:class:`PhantomSubject`);
- :func:`subject_rng` gives subject k's generator for a seed.
"""

from mrsynth_cli.phantom.dataset import simulate_dataset, subject_rng, write_subject
from mrsynth_cli.phantom.simulate import PhantomSubject, simulate_subject
from mrsynth_cli.phantom.tissues import Tissue

__all__ = ["simulate_dataset", "simulate_subject", "subject_rng", "write_subject", "PhantomSubject", "Tissue"]
