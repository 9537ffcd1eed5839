"""Names shared by rollouts/ and eval/: observation keys, metric names, checkpoint file names.

One definition each, so a log written by training can be read by eval/ without string literals drifting apart.
"""

# Observation keys of the envs/ contract (envs/__init__.py).
OBS_IMAGE = "image"
OBS_INSTRUCTION = "instruction"
OBS_STATE = "state"

# Episode metrics (same names as ManiSkill3's vector env reports and eval/ uses).
SUCCESS_ONCE = "success_once"  # the episode reached success at some step
SUCCESS_AT_END = "success_at_end"  # success on the episode's last step
RETURN = "return"  # sum of the training reward over the episode
EPISODE_LEN = "episode_len"  # number of steps
EPISODE_METRICS = (SUCCESS_ONCE, SUCCESS_AT_END, RETURN, EPISODE_LEN)

# Prefixes of logged scalars.
CHARTS = "charts/"  # episode metrics, learning rates, counters
LOSSES = "losses/"  # losses and their diagnostics (entropy, approx_kl, clipfrac, explained_var, kl_pi0)
TIME = "time/"  # throughput and time split (env_steps_per_s, samples_per_s, sim_s, inference_s, update_s)
EVAL = "eval/"  # written by eval/ callbacks (e.g. the online KL monitor)

# Counters kept in every checkpoint.
UPDATE = "update"  # completed optimizer updates (PPO/GRPO/REINFORCE iterations, SFT steps)
ENV_STEPS = "env_steps"  # environment steps summed over envs and ranks
SAMPLES = "samples"  # training samples consumed by the optimizer

# Checkpoint layout: <run_dir>/checkpoints/step_<update:08d>/{these files}; see rollouts/checkpoint.py.
CONFIG_FILE = "config.json"
ADAPTER_DIR = "adapter"  # PEFT format (adapter_config.json + adapter_model.safetensors)
VALUE_HEAD_FILE = "value_head.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
TRAINER_STATE_FILE = "trainer_state.json"  # counters, scheduler, RNG states, optimizer layout
METRICS_FILE = "metrics.jsonl"
