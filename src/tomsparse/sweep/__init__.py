"""The m-sweep: computing points and nothing else. ``runner`` perturbs the model for each
(mask mode, seed, m), evaluates ToM and perplexity, undoes the perturbation and writes each
point as it finishes (resumable); ``matched`` searches the size of the damage-matched
controls; ``inputs`` what every point shares (perplexity splits, massive channels);
``export`` the perturbed model as a Hugging Face folder; ``locks`` lets several processes
share one folder; ``folder`` owns every path and file name of a sweep folder and a run
folder. Judging the points is ``tomsparse.judge``'s."""
