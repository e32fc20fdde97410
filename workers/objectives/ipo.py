"""IPO: Identity Preference Optimization (Azar et al., "A General Theoretical Paradigm to Understand
Learning from Human Preferences", arXiv 2310.12036, eq. 17).

    h    = (logp_theta(y_w) - logp_ref(y_w)) - (logp_theta(y_l) - logp_ref(y_l))
    loss = (h - 1 / (2 * beta))^2                 (beta plays the paper's tau)

`length_normalize = False` (the default) is the paper form on summed log-probs, as in the SPPO fork
and the INPO re-implementations; INPO at its first iteration (pi_t = pi_ref) equals this loss with the same
beta. `length_normalize = True` is TRL's `loss_type="ipo"` (every version checked): each log-prob,
policy and reference, is divided by its completion-token count before h is formed,

    h = (logp_theta(y_w) - logp_ref(y_w)) / |y_w| - (logp_theta(y_l) - logp_ref(y_l)) / |y_l|,

and the logged rewards use the same normalised log-ratios (as TRL's do).

Deviations: none (the normalisation is a switch; the default is the paper's unnormalised form, which makes
1/(2 beta) a target in summed nats rather than in nats per token).
"""

from __future__ import annotations

from typing import ClassVar

from sparring.workers.objectives.base import LossInputs, LossOutput, reference_logratios


class IPOLoss:
    """Squared distance of the DPO margin h to 1/(2 beta); optional TRL per-token normalisation."""

    name: ClassVar[str] = "ipo"
    needs_reference: ClassVar[bool] = True
    needs_prev_policy: ClassVar[bool] = False
    needs_win_prob: ClassVar[bool] = False
    needs_win_rates: ClassVar[bool] = False
    needs_lengths: ClassVar[bool] = True
    stateful: ClassVar[bool] = False

    def __init__(self, beta: float, length_normalize: bool = False) -> None:
        if not beta > 0.0:
            raise ValueError(f"IPO beta must be > 0, got {beta}")
        self.beta = float(beta)
        self.length_normalize = bool(length_normalize)

    def __call__(self, inputs: LossInputs) -> LossOutput:
        inputs = inputs.float32()
        chosen_logratios, rejected_logratios = reference_logratios(inputs, self.name)  # (B,) lc, lr
        if self.length_normalize:
            chosen_logratios = chosen_logratios / inputs.chosen_lengths
            rejected_logratios = rejected_logratios / inputs.rejected_lengths
        residual = (chosen_logratios - rejected_logratios) - 1.0 / (2.0 * self.beta)  # (B,) h - target
        return LossOutput(
            losses=residual.square(),
            chosen_rewards=(self.beta * chosen_logratios).detach(),
            rejected_rewards=(self.beta * rejected_logratios).detach(),
            metrics={"ipo/residual": residual.detach()},
        )
