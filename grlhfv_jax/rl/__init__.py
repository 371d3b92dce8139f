"""RL math (pure, jittable) and train steps.

grm_reward: GRM prompt, score parsing, paper reward, position debiasing.
grouped:    judging plans, aggregators (mean / win_rate / bradley_terry), judge diagnostics.
grpo:       group advantages, clipped policy loss with k3 KL, KL-in-reward, rollout metrics.
bt_rm, dpo, sft, logprobs: baseline losses and log-prob helpers.
optim, train: optimizer, TrainState and the jitted train steps.
See docs/algorithms.md.
"""
