"""Model compression on the ground: distillation, QAT, PTQ, hybrid precision, pruning, coresets.

Each step lives in its own module and is driven by a recipe (:mod:`ground.compress.recipe`):

============  ==============================================================================
module        holds
============  ==============================================================================
recipe        the typed recipe (one settings object per YAML file) and its loader
tasks         the three onboard models behind one small interface (cloud, landcover, anomaly)
trainer       one training loop: task loss, knowledge distillation, per-sample dynamics
distill       knowledge distillation on logits and features (+ the no-teacher control)
fakequant     BatchNorm folding, symmetric fake quantization, simulated-precision layers
ptq           calibrators (min-max, percentile, entropy) and post-training quantization
qat           quantization-aware training with GHOST-style self-distillation
hybrid        per-layer INT8/FP16 from sensitivity and the GHOST k-means criterion
prune         structured filter pruning with a learned global importance (PIC-PQ-like)
tdds          coreset selection from training dynamics (TDDS-like) vs random selection
flops         MACs, FLOPs, BOPs and theoretical size (conventions in its docstring)
qdq           ONNX export, symmetric per-channel Q/DQ writing, ONNX Runtime checks, latency
bundles       engine bundles for compressed variants (signed when a key is given)
pipeline      runs a recipe end to end and writes ``results.json``
report        markdown report and PNG plots from one or more ``results.json``
============  ==============================================================================

The methods' published formulas are not all public; the variants implemented are stated in
each module docstring and in ``docs/compress.md``.
"""
