"""rollouts/: fine-tune a VLA policy with on-policy RL (PPO, GRPO, REINFORCE) or on demonstrations (SFT, SFT + KL).

One readable file per algorithm, each `config dataclass -> helpers -> train(cfg, callbacks=())`:
    ppo.py        PPO with LoRA: GAE, clipped ratio on the 7-token action, value head, KL-to-pi0 penalty
    grpo.py       GRPO: groups of episodes from the same initial state, group-normalized returns, no critic
    reinforce.py  REINFORCE with a normalized-reward baseline
    sft.py        cross-entropy on the 7 action tokens (OpenVLA's objective), optional KL(pi0 || pi) regularizer
Shared plumbing, used by all four:
    collect.py    on-policy collection from a vector env (batched generation, bootstrapping at truncation)
    advantages.py GAE, group and batch normalization
    run.py        a run's life: run dir and --resume, policy + LoRA, optimizer, NaN stop, logging, callbacks
    checkpoint.py atomic checkpoints (PEFT adapter, value head, optimizer, RNG states, counters), no pickle
    logger.py     TensorBoard + metrics.jsonl + progress bar + summary line
    distributed.py torchrun/DDP: gradient averaging, sharded rollouts, one writer
    config.py     shared config fields, validation, CLI (tyro), resume compatibility
    presets.py    named configs: tiny (CPU) and openvla-7b-a100 / -40gb
    constants.py  observation keys, metric names, file names shared with eval/

Scripts: scripts/train_ppo.py (--algorithm ppo|grpo|reinforce), scripts/train_sft.py, scripts/bench_rollouts.py.
eval/ plugs in through `callbacks` (called every cfg.callback_every updates with a RunContext; see run.py).
"""
