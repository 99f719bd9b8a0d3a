"""The tanh recurrence with a hand-written BPTT backward (``model.impl: fused``).

The recurrent part lives here: h_t = tanh(a_t + W_hh h_{t-1}) for all t,
where a_t = W_xh x_t + b_h was already computed for every step in one gather
or GEMM. For the top layer the output projection y = W_hy h + b_y comes along,
so that its backward can write dL/dh straight into the buffer BPTT works in.

Why hand-write it: autograd's unrolled loop records ~5 nodes per step and
allocates a fresh tensor for each; here each step is two in-place kernels
forward (a beta=1 GEMM, tanh_) and two backward (tanh_backward, a beta=1 GEMM),
all in place in one time-major (T*B, H) buffer, and dW_hh is one large GEMM
after the loop instead of T small ones. This is torch-rnn's recipe. The step
GEMMs all multiply by the same W_hh, so on CPU they use MKL's packed GEMM
where torch has it (``packed_gemm.py``), and ``addmm_`` elsewhere.
"""
import torch
from torch.autograd.function import once_differentiable

from .packed_gemm import accumulate_matmul


class _TanhRecurrence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, W_hh, h0, W_hy, b_y):
        # pre: (T*B, H) = W_xh x_t + b_h for every t, time-major, a fresh buffer from the gather
        # or GEMM that made it; W_hh: (H, H); h0: (B, H); W_hy: (V, H) and b_y: (V,), or None
        # below the top layer. Each step overwrites its B rows of pre in place: += W_hh h_{t-1}
        # (a beta=1 GEMM, no copy), then tanh. Nothing else reads pre, so this saves allocating
        # and filling a second (T*B, H) buffer. (2-D, because autograd lets a Function that
        # returns two tensors modify an input in place only if that input is not a view.)
        ctx.mark_dirty(pre)
        ctx.set_materialize_grads(False)  # an unused output's gradient is None, not a zero tensor
        (B, H), T = h0.shape, pre.shape[0] // h0.shape[0]
        with torch.autocast(pre.device.type, enabled=False):
            W_hh, h0 = W_hh.to(pre.dtype), h0.to(pre.dtype).contiguous()
            add_h_W_hh_t = accumulate_matmul(W_hh, B, transpose=True, calls=T)  # pre_t += h W_hh^T
            h = h0
            for pre_t in pre.view(T, B, H).unbind(0):  # T views of (B, H); one call, not T indexings
                h = add_h_W_hh_t(pre_t, h).tanh_()
            if W_hy is None:
                ctx.save_for_backward(W_hh, h0, pre)
                return pre
            W_hy, b_y = W_hy.to(pre.dtype), b_y.to(pre.dtype)
            logits = torch.addmm(b_y, pre, W_hy.t())  # one GEMM over all T*B rows
        ctx.save_for_backward(W_hh, h0, pre, W_hy)
        return pre, logits

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, grad_logits=None):
        W_hh, h0, out, *head = ctx.saved_tensors
        (B, H), T = h0.shape, out.shape[0] // h0.shape[0]
        with torch.autocast(out.device.type, enabled=False):
            # g[t] starts as dL/dh_t from above (the output projection's backward, plus any
            # gradient on the layer's outputs) and becomes, in place, dL/d(pre-activation_t):
            # the gradient of pre, and (after the loop) of W_hh. Computing the projection's
            # backward here lets its GEMM write g directly instead of into a tensor we must copy.
            if head and grad_logits is not None:
                grad_logits = grad_logits.to(out.dtype)
                g = torch.mm(grad_logits, head[0])
                if grad_out is not None:
                    g += grad_out
            elif grad_out is not None:
                g = grad_out.to(out.dtype, memory_format=torch.contiguous_format, copy=True)
            else:
                g = torch.zeros_like(out)
            tanh_backward = torch.ops.aten.tanh_backward.grad_input
            add_g_W_hh = accumulate_matmul(W_hh, B, transpose=False, calls=T)  # c += g W_hh
            gs, hs = g.view(T, B, H).unbind(0), out.view(T, B, H).unbind(0)
            for t in range(T - 1, -1, -1):
                tanh_backward(gs[t], hs[t], grad_input=gs[t])  # *= 1 - h_t^2, one kernel
                if t > 0:
                    add_g_W_hh(gs[t - 1], gs[t])  # + W_hh^T dpre_t, in row form
            # A carried state arrives detached: its gradient would be a wasted GEMM.
            dh0 = gs[0] @ W_hh if ctx.needs_input_grad[2] else None
            # sum_t dpre_t^T h_{t-1}: one GEMM over (T-1)*B rows, plus the h0 term.
            dW_hh = g[B:].t() @ out[:-B]
            dW_hh.addmm_(gs[0].t(), h0)
            if not head or grad_logits is None:
                return g, dW_hh, dh0, None, None
            return g, dW_hh, dh0, grad_logits.t() @ out, grad_logits.sum(0)


def rnn_recurrence(pre, W_hh, h0, W_hy=None, b_y=None):
    """h_t = tanh(pre_t + W_hh h_{t-1}) for all t, time-major: (T*B, H) -> (T*B, H), in pre's memory.

    With W_hy (V, H) and b_y (V,), returns (h, logits), logits = W_hy h_t + b_y as (T*B, V).
    pre must be a fresh tensor, not a view, that nothing else reads (it is overwritten).
    """
    return _TanhRecurrence.apply(pre, W_hh, h0, W_hy, b_y)
