"""The learner layer, between the math (`rl/`: arrays in, arrays out) and the stages:
steps.py (jitted train steps and `TrainState`, model-agnostic), grpo.py (the GRPO learner: rollout
rows, advantages, reference log-probs, mini-batches), loop.py (train state from config, the
resumable train loop and its checkpoints)."""
