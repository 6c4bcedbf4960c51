"""The m-sweep: ``runner`` perturbs the model for each (mask mode, seed, m), evaluates ToM and
perplexity, undoes the perturbation and writes each point as it finishes (resumable);
``summary`` turns the points into the summary tables (tidy, per point, controls side by
side); ``reference`` recomputes the reference code's summary from a ``tom/`` results folder;
``specificity`` the paired statistics of whether the effect is specific to ToM (``roles``:
which prompts are ToM and controls; ``verdicts``: the claims and their wording;
``specificity_tables``: read, compute, write); ``folder`` owns every path and file name of a
sweep folder and a run folder."""
