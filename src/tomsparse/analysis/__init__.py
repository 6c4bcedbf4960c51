"""The mechanistic analyses of the paper's section on RoPE (``tomsparse analyze``).

* ``anatomy``: where a mask lands (per layer/role, per head and rotary pair), its rank and the
  size of the masked weights (analysis 1);
* ``probe``: one pass over ToM prompts with the attention routed through a recording
  function, reducing Q/K pair norms, first-token attention, q-k angles and hidden-state
  extremes on the fly;
* ``tables``: analyses 2-5 as tables (dominant frequencies, attention sinks, q-k geometry,
  massive activations) from the probes of baseline and perturbed models;
* ``plots`` and ``run``: PNGs, ``analysis.html``, the run-report sections and the command;
  ``AnalysisConfig.matched`` adds damage-matched controls, each at its own m (``matched_at``
  takes them from a sweep's ``SweepFolder.read_matched``).
"""

from tomsparse.analysis.anatomy import mask_anatomy, mask_rank
from tomsparse.analysis.probe import Probe, capture, measure
from tomsparse.analysis.run import AnalysisConfig, analyze, matched_at

__all__ = ["AnalysisConfig", "Probe", "analyze", "mask_anatomy", "capture",
           "mask_rank", "matched_at", "measure"]
