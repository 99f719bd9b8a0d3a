"""The tanh recurrence with a hand-written BPTT backward (``model.impl: fused``).

Only the recurrent part lives here: h_t = tanh(a_t + W_hh h_{t-1}) for all t,
where a_t = W_xh x_t + b_h was already computed for every step in one gather
or GEMM. Everything that is not recurrent (input projection, output
projection, loss) stays with autograd outside.

Why hand-write it: autograd's unrolled loop records ~5 nodes per step and
allocates a fresh tensor for each; here each step is two in-place kernels
forward (addmm, tanh_) and two backward (mul, addmm), and dW_hh is one large
GEMM after the loop instead of T small ones. This is torch-rnn's recipe.
"""
import torch
from torch.autograd.function import once_differentiable


class _TanhRecurrence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xproj, W_hh, h0):
        # xproj: (T, B, H), already holding W_xh x_t + b_h; W_hh: (H, H); h0: (B, H)
        with torch.autocast(xproj.device.type, enabled=False):
            W_hh = W_hh.to(xproj.dtype)
            h0 = h0.to(xproj.dtype)
            out = torch.empty_like(xproj, memory_format=torch.contiguous_format)  # (T, B, H)
            W_hh_t = W_hh.t()
            h = h0
            for t in range(xproj.shape[0]):
                torch.addmm(xproj[t], h, W_hh_t, out=out[t])  # W_hh h_{t-1} + a_t, row form
                h = out[t].tanh_()
        ctx.save_for_backward(W_hh, h0, out)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        W_hh, h0, out = ctx.saved_tensors
        T, B, H = out.shape
        with torch.autocast(out.device.type, enabled=False):
            grad_out = grad_out.to(out.dtype).contiguous()
            # tanh' = 1 - h^2 for all steps in one kernel instead of T small ones.
            dtanh = torch.addcmul(torch.ones_like(out), out, out, value=-1.0)
            dpre = torch.empty_like(out)  # dL/d(pre-activation), also dL/d xproj
            dh = grad_out[T - 1]  # dL/dh_t: from the output at t plus, below, from step t+1
            for t in range(T - 1, -1, -1):
                torch.mul(dh, dtanh[t], out=dpre[t])
                if t > 0:
                    dh = torch.addmm(grad_out[t - 1], dpre[t], W_hh)  # row form of W_hh^T dpre
            dh0 = dpre[0] @ W_hh
            # sum_t dpre_t^T h_{t-1} as one GEMM over (T-1)*B rows, plus the h0 term.
            dW_hh = dpre[1:].reshape(-1, H).t() @ out[:-1].reshape(-1, H)
            dW_hh.addmm_(dpre[0].t(), h0)
        return dpre, dW_hh, dh0


def rnn_recurrence(xproj, W_hh, h0):
    """(T, B, H) pre-activations without the recurrent term -> (T, B, H) hidden states."""
    return _TanhRecurrence.apply(xproj, W_hh, h0)
