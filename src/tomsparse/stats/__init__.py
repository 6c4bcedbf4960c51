"""The statistics engine: the one place in tomsparse that resamples, computes intervals or
runs a test. Everything here takes plain arrays (numpy) and returns plain results; nothing
reads a folder or knows a sweep. Built on scipy.stats where it has the method."""

# The engine's public API (intervals over clusters, controls, gates, outcomes, Holm, dose,
# perplexity, detectable effects); each function's docstring states its decision rule and
# error rate.
from tomsparse.stats.controls import (ControlContrast, MaskComparison, compare_with_masks,
                                      contrast_with_controls, mask_spread, masks_needed,
                                      mean_of_masks)
from tomsparse.stats.dose import cluster_slopes, dose_response, slope_weights
from tomsparse.stats.gates import (GateResult, PassRateGate, chance_gate, pass_rate_gate,
                                   scenario_chance)
from tomsparse.stats.intervals import (METHODS, Interval, cluster_means, paired_interval,
                                       t_interval)
from tomsparse.stats.multiplicity import holm, holm_levels
from tomsparse.stats.outcomes import (CANNOT_BE_MEASURED, MARGIN_ACCURACY, MARGIN_NATS,
                                      NOT_SHOWN, OPPOSITE, OUTCOMES, RULED_OUT, SHOWN,
                                      Equivalence, classify, equivalence_from_interval,
                                      equivalence_test)
from tomsparse.stats.perplexity import (PERPLEXITY_THRESHOLD, PerplexityRatio,
                                        perplexity_ratio_interval)
from tomsparse.stats.power import (detectable_effect, detectable_effect_contrast,
                                   detectable_effect_paired, t_power)
