"""eval/: what a fine-tuned policy kept, and whether KL(pi0 || pi) predicts it.

- stats.py       Wilson 95% intervals; forgetting, retained fraction, new-task gain
- kl.py          the action-token KL monitor (forward/reverse KL, TV by the chain rule over the 7 tokens; online
                 callback for rollouts/ and offline on any checkpoint); LoRA weight distance
- suite.py       retained-skill suites (built-in and YAML), seeded vector-env evaluation, videos, eval.json/CSV/MD
- evaluate.py    one checkpoint (base or base + adapter) on a suite + new task, with KL and the comparison
- analysis.py    points over checkpoints, forgetting-vs-predictor fits (linear, quadratic, R^2), plots
- report.py      the Markdown report of an experiment directory
- pretrain.py    pi0 for the CPU experiment: behaviour cloning of a preset on scripted demos
- stages.py      resumable experiment stages
- experiment.py  the whole RL's Razor experiment (scripts/razor.py) and its presets
"""
