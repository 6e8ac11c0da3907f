"""pipeline.amp: mixed precision for the training step.

On CUDA the forward pass and the loss run under float16 autocast, and a
GradScaler keeps small float16 gradients from flushing to zero. Autocast
itself keeps softmax, log-softmax, cross entropy, sums and powers in float32,
and NCMLoss turns autocast off and casts the logits to float32 (the KL of
small co-occurrence probabilities needs it). On the CPU float16 autocast does
not help KPConv, so the option is ignored there with a warning.
"""
import contextlib
import logging

import torch

log = logging.getLogger(__name__)


class MixedPrecision:
    """Autocast + gradient scaling when enabled on CUDA; plain float32 else."""

    def __init__(self, enabled, device):
        device = torch.device(device)
        self.enabled = bool(enabled) and device.type == 'cuda'
        if enabled and not self.enabled:
            log.warning("pipeline.amp is for CUDA; training on %s in float32",
                        device)
        self.device_type = device.type
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.enabled)

    def autocast(self):
        """Context of the forward pass and the loss."""
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=torch.float16)

    def backward_and_step(self, loss, optimizer, parameters, clip_value=None):
        """Backward, optional gradient clipping by value (on the unscaled
        gradients, as without amp), optimizer step."""
        self.scaler.scale(loss).backward()
        if clip_value is not None and clip_value > 0:
            self.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_value_(parameters, clip_value)
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self):
        return self.scaler.state_dict() if self.enabled else None

    def load_state_dict(self, state):
        if self.enabled and state:
            self.scaler.load_state_dict(state)
