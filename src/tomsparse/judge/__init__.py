"""Judging a sweep: from the points a sweep folder holds to the claims a report states.

``clusters`` the per-cluster values (families, roles, answer pairs, paired changes, the gate);
``specificity`` the paired statistics engine over clusters (contrasts
with random and damage-matched controls, the pass-rate gate, dose-response), built on
``tomsparse.stats``; ``verdicts`` the claims (a)-(e), Holm over the run, and their wording;
``tables`` reads a sweep folder's points and writes the specificity tables and verdicts;
``summary`` the summary tables (tidy, per point, controls side by side); ``frontier`` the mask
family's Pareto front; ``replicates`` the verdicts again under independent score draws;
``reference`` the reference code's own summary of a ``tom/`` results folder."""
