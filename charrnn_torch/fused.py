"""The tanh recurrence with a hand-written BPTT backward (``model.impl: fused``).

Only the recurrent part lives here: h_t = tanh(a_t + W_hh h_{t-1}) for all t,
where a_t = W_xh x_t + b_h was already computed for every step in one gather
or GEMM. Everything that is not recurrent (input projection, output
projection, loss) stays with autograd outside.

Why hand-write it: autograd's unrolled loop records ~5 nodes per step and
allocates a fresh tensor for each; here each step is two in-place kernels
forward (addmm_, tanh_) and two backward (tanh_backward, addmm_), all in
place in one (T, B, H) buffer, and dW_hh is one large
GEMM after the loop instead of T small ones. This is torch-rnn's recipe.
"""
import torch
from torch.autograd.function import once_differentiable


class _TanhRecurrence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, W_hh, h0):
        # pre: (T, B, H) = W_xh x_t + b_h for every t, a fresh buffer from the gather or
        # GEMM that made it; W_hh: (H, H); h0: (B, H). Each step overwrites pre[t] in place:
        # += W_hh h_{t-1} (a beta=1 GEMM, no copy), then tanh. Nothing else reads pre, so
        # this saves allocating and filling a second (T, B, H) buffer.
        ctx.mark_dirty(pre)
        with torch.autocast(pre.device.type, enabled=False):
            W_hh, h0 = W_hh.to(pre.dtype), h0.to(pre.dtype)
            # A contiguous W_hh^T makes MKL's GEMM ~7% faster than a transposed view: worth
            # one (H, H) copy for a long window, not for the one-step calls of sampling.
            W_hh_t = W_hh.t().contiguous() if pre.shape[0] >= 16 else W_hh.t()
            h = h0
            for pre_t in pre.unbind(0):  # T views of (B, H); one call instead of T indexings
                h = pre_t.addmm_(h, W_hh_t).tanh_()
        ctx.save_for_backward(W_hh, h0, pre)
        return pre

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        W_hh, h0, out = ctx.saved_tensors
        T, B, H = out.shape
        with torch.autocast(out.device.type, enabled=False):
            # g[t] starts as dL/dh_t from the layer's output and becomes, in place,
            # dL/d(pre-activation_t): the gradient of pre, and (after the loop) of W_hh.
            g = grad_out.to(out.dtype, memory_format=torch.contiguous_format, copy=True)
            tanh_backward = torch.ops.aten.tanh_backward.grad_input
            gs, hs = g.unbind(0), out.unbind(0)
            for t in range(T - 1, -1, -1):
                tanh_backward(gs[t], hs[t], grad_input=gs[t])  # *= 1 - h_t^2, one kernel
                if t > 0:
                    gs[t - 1].addmm_(gs[t], W_hh)  # + W_hh^T dpre_t, in row form
            dh0 = g[0] @ W_hh
            # sum_t dpre_t^T h_{t-1}: one GEMM over (T-1)*B rows, plus the h0 term.
            dW_hh = g[1:].reshape(-1, H).t() @ out[:-1].reshape(-1, H)
            dW_hh.addmm_(g[0].t(), h0)
        return g, dW_hh, dh0


def rnn_recurrence(pre, W_hh, h0):
    """h_t = tanh(pre_t + W_hh h_{t-1}) for all t: (T, B, H) -> (T, B, H), reusing pre's memory.

    pre must be a fresh tensor that nothing else reads (it is overwritten).
    """
    return _TanhRecurrence.apply(pre, W_hh, h0)
