"""A planted ground truth (issue 34): a skill trained into a known, sparse set P of a model's
weights, so that the method's masks can be scored against the weights the skill lives in.

* ``planted_set``: the planted set P (per target matrix a seeded random fraction ``density``
  of its entries) and the overlap counts of a mask with it;
* ``train``: teaching the skill by training only P (everything else frozen), the pass-rate
  gate on a split before and after, and the ground-truth checks (restoring P gives the base
  model back exactly; a random set of the same size perturbed leaves the gate's pass rate in
  its interval);
* ``folder``: the planted model folder (a Hugging Face folder in fp32 safetensors that every
  command loads with ``--model DIR``) with ``planted.json`` and the planted indices beside the
  weights: its one owner, writer and reader.
"""
