"""The three recurrences with hand-written BPTT backwards (``model.impl: fused``): the tanh
cell, the LSTM and the GRU.

Each runs the recurrent part of one layer over all T steps, from pre = W_xh x_t + b_h, which was
already computed for every step in one gather or GEMM. For the top layer the output projection
y = W_hy h + b_y comes along, so that its backward can write dL/dh straight into the buffer BPTT
works in. All three return the same thing: ``(h (T*B, H), the final state, logits (T*B, V) or
None)``, the final state being h_T, or (h_T, c_T) for the LSTM.

Why hand-write them: autograd's unrolled loop records several nodes per step and allocates a
fresh tensor for each; here each step is one GEMM into all of the cell's gates and the gate maths
in place, in time-major (T*B, ·) buffers, and dW_hh is one large GEMM after the loop instead of T
small ones. This is torch-rnn's recipe. The step GEMMs all multiply by the same W_hh, so on CPU
they use a GEMM that packs W_hh once (oneDNN's or MKL's, ``packed_gemm.py``) where torch has one,
and ``addmm_`` elsewhere. Under impl fused_cpp each loop of 16 steps or more runs compiled instead
(compiled.py): the same maths, each thread multiplying for a share of the hidden units.
"""
import torch
from torch.autograd.function import once_differentiable

from .compiled import kernels_for
from .packed_gemm import PACK_MIN_CALLS, accumulate_matmul, step_kernel


class _TanhRecurrence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, W_hh, h0, W_hy, b_y, kernels):
        # pre: (T*B, H) = W_xh x_t + b_h for every t, time-major, a fresh buffer from the gather
        # or GEMM that made it; W_hh: (H, H); h0: (B, H); W_hy: (V, H) and b_y: (V,), or None
        # below the top layer. Each step overwrites its B rows of pre in place: += W_hh h_{t-1}
        # (a beta=1 GEMM, no copy), then tanh. Nothing else reads pre, so this saves allocating
        # and filling a second (T*B, H) buffer. (2-D, because autograd lets a Function that
        # returns two tensors modify an input in place only if that input is not a view.)
        ctx.mark_dirty(pre)
        ctx.set_materialize_grads(False)  # an unused output's gradient is None, not a zero tensor
        ctx.kernels = kernels  # compiled.py's (impl fused_cpp), or None
        (B, H), T = h0.shape, pre.shape[0] // h0.shape[0]
        with torch.autocast(pre.device.type, enabled=False):
            W_hh, h0 = W_hh.to(pre.dtype), h0.to(pre.dtype).contiguous()
            if _compiled_loop(kernels, T):  # as the LSTM's
                kernels.tanh_forward_loop(pre, h0, W_hh.contiguous(), _onednn(W_hh, B, T))
            else:
                add_h_W_hh_t = accumulate_matmul(W_hh, B, transpose=True, calls=T)  # pre_t += h W_hh^T
                h = h0
                for pre_t in pre.view(T, B, H).unbind(0):  # T views of (B, H); one call, not T indexings
                    h = tanh_step(pre_t, h, add_h_W_hh_t)
            if W_hy is None:
                ctx.save_for_backward(W_hh, h0, pre)
                return (pre,)
            logits = _head_forward(pre, W_hy, b_y)  # one GEMM over all T*B rows
        ctx.save_for_backward(W_hh, h0, pre, W_hy.to(pre.dtype))
        return pre, logits

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, grad_logits=None):
        W_hh, h0, out, *head = ctx.saved_tensors
        (B, H), T = h0.shape, out.shape[0] // h0.shape[0]
        with torch.autocast(out.device.type, enabled=False):
            # g[t] starts as dL/dh_t from above and becomes, in place, dL/d(pre-activation_t):
            # the gradient of pre, and (after the loop) of W_hh.
            g = _dh_from_above(out, grad_out, grad_logits, head)
            gs, hs = g.view(T, B, H).unbind(0), out.view(T, B, H).unbind(0)
            if _compiled_loop(ctx.kernels, T):
                ctx.kernels.tanh_backward_loop(g, out, h0, W_hh.contiguous(), _onednn(W_hh, B, T))
            else:
                add_g_W_hh = accumulate_matmul(W_hh, B, transpose=False, calls=T)  # c += g W_hh
                for t in range(T - 1, -1, -1):
                    _tanh_backward(gs[t], hs[t], grad_input=gs[t])  # *= 1 - h_t^2, one kernel
                    if t > 0:
                        add_g_W_hh(gs[t - 1], gs[t])  # + W_hh^T dpre_t, in row form
            # A carried state arrives detached: its gradient would be a wasted GEMM.
            dh0 = gs[0] @ W_hh if ctx.needs_input_grad[2] else None
            # sum_t dpre_t^T h_{t-1}: one GEMM over (T-1)*B rows, plus the h0 term.
            dW_hh = g[B:].t() @ out[:-B]
            dW_hh.addmm_(gs[0].t(), h0)
            return (g, dW_hh, dh0, *_head_grads(out, grad_logits, head), None)


def tanh_step(a, h_prev, add_h_W_hh_t):
    """One step of the tanh cell, in place: a (B, H) = W_xh x_t + b_h becomes h_t =
    tanh(a + W_hh h_{t-1}). The fused forward and one-step sampling (stepper.py) both run it,
    so that both give the same bits."""
    return add_h_W_hh_t(a, h_prev).tanh_()


def _head_forward(out, W_hy, b_y):
    """logits = W_hy h_t + b_y for every row of out (T*B, H): one GEMM, (T*B, V)."""
    return torch.addmm(b_y.to(out.dtype), out, W_hy.to(out.dtype).t())


def _dh_from_above(out, grad_out, grad_logits, head):
    """dL/dh_t for every t as one fresh (T*B, H) buffer that the backward may overwrite: the
    output projection's backward (one GEMM written straight into it, not into a tensor to copy),
    plus any gradient on the layer's outputs."""
    if head and grad_logits is not None:
        g = torch.mm(grad_logits.to(out.dtype), head[0])
        if grad_out is not None:
            g += grad_out
        return g
    if grad_out is not None:
        return grad_out.to(out.dtype, memory_format=torch.contiguous_format, copy=True)
    return torch.zeros_like(out)


def _head_grads(out, grad_logits, head):
    """(dW_hy, db_y), or (None, None) below the top layer or when the logits carry no gradient."""
    if not head or grad_logits is None:
        return None, None
    grad_logits = grad_logits.to(out.dtype)
    return grad_logits.t() @ out, grad_logits.sum(0)


def rnn_recurrence(pre, W_hh, h0, W_hy=None, b_y=None, compiled=False):
    """h_t = tanh(pre_t + W_hh h_{t-1}) for all t, time-major: pre (T*B, H) -> (h (T*B, H), h_T,
    logits), h in pre's memory. logits = W_hy h_t + b_y as (T*B, V) when W_hy (V, H) and b_y (V,)
    are given, else None. pre must be a fresh tensor, not a view, that nothing else reads (it is
    overwritten).
    """
    h, *logits = _TanhRecurrence.apply(pre, W_hh, h0, W_hy, b_y, kernels_for(pre) if compiled else None)
    return h, h[-h0.shape[0]:], logits[0] if logits else None


_sigmoid_backward = torch.ops.aten.sigmoid_backward.grad_input  # grad * y (1 - y), into grad_input
_tanh_backward = torch.ops.aten.tanh_backward.grad_input  # grad * (1 - y^2), into grad_input


class _LSTMRecurrence(torch.autograd.Function):
    """torch-rnn's LSTM.lua recipe: per step one GEMM into all four gates, then the gate maths in
    place; a hand-written BPTT; dW_hh as one GEMM after the loop. The gate maths runs as aten
    calls, or as one compiled kernel per step and direction (compiled.py, impl fused_cpp); over many
    steps the compiled kernels run the whole loop, in one parallel region whose threads share each
    step."""

    @staticmethod
    def forward(ctx, pre, W_hh, h0, c0, W_hy, b_y, kernels):
        # pre: (T*B, 4H) = W_xh x_t + b_h for every t, time-major, a fresh buffer that becomes the
        # gates i, f, g, o in place (so it is returned, as autograd requires of a modified input);
        # W_hh: (4H, H); h0, c0: (B, H); kernels: compiled.py's, or None for aten's.
        # Returns (gates, h (T*B, H), c_T (B, H)[, logits (T*B, V)]).
        ctx.mark_dirty(pre)
        ctx.set_materialize_grads(False)
        ctx.kernels = kernels
        (B, H), T = h0.shape, pre.shape[0] // h0.shape[0]
        with torch.autocast(pre.device.type, enabled=False):
            W_hh, h0, c0 = W_hh.to(pre.dtype), h0.to(pre.dtype).contiguous(), c0.to(pre.dtype).contiguous()
            h_all, c_all, tc_all = (pre.new_empty(T * B, H) for _ in range(3))  # h_t, c_t, tanh(c_t)
            gates, hs, cs, tcs = (buf.view(T, B, -1).unbind(0) for buf in (pre, h_all, c_all, tc_all))
            if _compiled_loop(kernels, T):
                kernels.forward_loop(pre, h0, c0, h_all, c_all, tc_all, W_hh.contiguous(), _onednn(W_hh, B, T))
            else:
                add_h_W_hh_t = accumulate_matmul(W_hh, B, transpose=True, calls=T)  # gates_t += h W_hh^T
                step = lstm_step if kernels is None else kernels.forward_step
                h, c = h0, c0
                for t in range(T):
                    step(add_h_W_hh_t(gates[t], h), c, cs[t], tcs[t], hs[t])  # gates_t: (B, 4H)
                    h, c = hs[t], cs[t]
            c_T = cs[-1].clone()
            head = (W_hy.to(pre.dtype),) if W_hy is not None else ()
            logits = _head_forward(h_all, W_hy, b_y) if head else None
        ctx.save_for_backward(W_hh, h0, c0, pre, h_all, c_all, tc_all, *head)
        return (pre, h_all, c_T) if logits is None else (pre, h_all, c_T, logits)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_gates, grad_h, grad_cT, grad_logits=None):
        W_hh, h0, c0, gates_all, h_all, c_all, tc_all, *head = ctx.saved_tensors
        (B, H), T = h0.shape, h_all.shape[0] // h0.shape[0]
        with torch.autocast(h_all.device.type, enabled=False):
            dh_all = _dh_from_above(h_all, grad_h, grad_logits, head)  # gains the recurrent part in place
            dc = (grad_cT.to(h_all.dtype, memory_format=torch.contiguous_format, copy=True) if grad_cT is not None
                  else torch.zeros_like(h0))
            da_all = torch.empty_like(gates_all)  # dL/d(pre-activation) of the gates; the saved ones stay
            gates, das, dhs, cs, tcs = (buf.view(T, B, -1).unbind(0)
                                        for buf in (gates_all, da_all, dh_all, c_all, tc_all))
            if _compiled_loop(ctx.kernels, T):
                ctx.kernels.backward_loop(gates_all, c0, c_all, tc_all, dh_all, dc, da_all, W_hh.contiguous(),
                                          _onednn(W_hh, B, T))
            else:
                add_da_W_hh = accumulate_matmul(W_hh, B, transpose=False, calls=T)  # dh += da W_hh
                step = _lstm_backward_step if ctx.kernels is None else ctx.kernels.backward_step
                for t in range(T - 1, -1, -1):
                    c_prev = cs[t - 1] if t > 0 else c0
                    step(gates[t], c_prev, tcs[t], dhs[t], dc, das[t])  # das[t]; dc -> dL/dc_{t-1}
                    if t > 0:
                        add_da_W_hh(dhs[t - 1], das[t])
            dh0 = das[0] @ W_hh if ctx.needs_input_grad[2] else None
            dW_hh = da_all[B:].t() @ h_all[:-B]  # sum_t da_t^T h_{t-1}: one GEMM, plus the h0 term
            dW_hh.addmm_(das[0].t(), h0)
            return (da_all, dW_hh, dh0, dc if ctx.needs_input_grad[3] else None,
                    *_head_grads(h_all, grad_logits, head), None)


def _compiled_loop(kernels, T):
    """Whether the compiled kernels run a cell's whole loop over the T steps (lstm_kernel.cpp's
    *_forward_loop and *_backward_loop): for a loop of many steps (packed_gemm.PACK_MIN_CALLS, as
    many as pay for packing W_hh). Fewer, like sampling's one step, run from Python: the calls the
    Stepper makes (stepper.py), so that it gives the model's bits."""
    return kernels is not None and T >= PACK_MIN_CALLS


def _onednn(W_hh, B, T):
    """Whether the compiled loops multiply by W_hh with oneDNN (packed_gemm.step_kernel's rule), else
    with at::mm."""
    return step_kernel(W_hh.shape, B, T, W_hh.device, W_hh.dtype) == "onednn"


def lstm_step(a, c_prev, c, tc, h):
    """The LSTM's step maths after its GEMM, in aten calls: a (B, 4H) pre-activations become the gates
    i, f, g, o in place; c, tc and h (B, H) receive c_t, tanh(c_t) and h_t. The same maths as
    lstm_kernel.cpp's forward step; the fused forward and one-step sampling (stepper.py) both run it."""
    H = h.shape[1]
    a[:, :2 * H].sigmoid_()  # i, f
    a[:, 2 * H:3 * H].tanh_()  # g
    a[:, 3 * H:].sigmoid_()  # o
    i, f, g, o = a.split(H, dim=1)
    torch.mul(f, c_prev, out=c).addcmul_(i, g)  # c_t = f c_{t-1} + i g
    torch.mul(o, torch.tanh(c, out=tc), out=h)  # h_t = o tanh(c_t)


def _lstm_backward_step(gates, c_prev, tc, dh, dc, da):
    """One step of the LSTM's BPTT in aten calls: da = dL/d(pre-activation of i, f, g, o), and dc
    carried back through the forget gate in place. The same maths as lstm_kernel.cpp's."""
    H = tc.shape[1]
    i, f, g, o = gates.split(H, dim=1)
    di, df, dg, do = da.split(H, dim=1)
    dc.add_(_tanh_backward(torch.mul(dh, o, out=dg), tc, grad_input=dg))  # via h_t; dg is free until below
    torch.mul(dc, g, out=di), torch.mul(dc, c_prev, out=df), torch.mul(dh, tc, out=do)
    _sigmoid_backward(da[:, :2 * H], gates[:, :2 * H], grad_input=da[:, :2 * H])  # i and f in one call
    _sigmoid_backward(do, o, grad_input=do)
    _tanh_backward(torch.mul(dc, i, out=dg), g, grad_input=dg)
    dc.mul_(f)  # the forget gate carries dL/dc_t back to c_{t-1}


def lstm_recurrence(pre, W_hh, h0, c0, W_hy=None, b_y=None, compiled=False):
    """The LSTM over all t, time-major: pre (T*B, 4H) -> (h (T*B, H), (h_T, c_T), logits),
    overwriting pre. logits as in rnn_recurrence. compiled: run the element-wise step maths in
    compiled.py's kernels where they apply (impl fused_cpp)."""
    kernels = kernels_for(pre) if compiled else None
    _, h, c_T, *logits = _LSTMRecurrence.apply(pre, W_hh, h0, c0, W_hy, b_y, kernels)
    return h, (h[-h0.shape[0]:], c_T), logits[0] if logits else None


class _GRURecurrence(torch.autograd.Function):
    """The GRU the same way. Its W_hh h must stay apart from W_xh x (r multiplies W_hn h + b_hn
    only), so each step's GEMM goes into its own buffer, prefilled with (0, 0, b_hn)."""

    @staticmethod
    def forward(ctx, pre, W_hh, b_hn, h0, W_hy, b_y, kernels):
        # pre: (T*B, 3H) = W_xh x_t + b_h, a fresh buffer that becomes r, z, n in place;
        # W_hh: (3H, H); b_hn: (H,); h0: (B, H); kernels: compiled.py's, or None.
        # Returns (gates, h (T*B, H)[, logits (T*B, V)]).
        ctx.mark_dirty(pre)
        ctx.set_materialize_grads(False)
        ctx.kernels = kernels
        (B, H), T = h0.shape, pre.shape[0] // h0.shape[0]
        with torch.autocast(pre.device.type, enabled=False):
            W_hh, h0 = W_hh.to(pre.dtype), h0.to(pre.dtype).contiguous()
            h_all = pre.new_empty(T * B, H)
            if _compiled_loop(kernels, T):  # as the LSTM's
                ah_all = torch.empty_like(pre)  # the loop writes W_hh h + (0, 0, b_hn) into all of it
                kernels.gru_forward_loop(pre, ah_all, h0, h_all, W_hh.contiguous(), b_hn.to(pre.dtype).contiguous(),
                                         _onednn(W_hh, B, T))
            else:
                add_h_W_hh_t = accumulate_matmul(W_hh, B, transpose=True, calls=T)  # ah_t += h W_hh^T
                ah_all = pre.new_zeros(T * B, 3 * H)
                ah_all[:, 2 * H:] = b_hn.to(pre.dtype)  # so that its last third is W_hn h + b_hn
                gates, ahs, hs = (buf.view(T, B, -1).unbind(0) for buf in (pre, ah_all, h_all))
                h = h0
                for t in range(T):
                    h = gru_step(gates[t], add_h_W_hh_t(ahs[t], h), h, hs[t])
            head = (W_hy.to(pre.dtype),) if W_hy is not None else ()
            logits = _head_forward(h_all, W_hy, b_y) if head else None
        ctx.save_for_backward(W_hh, h0, pre, ah_all, h_all, *head)
        return (pre, h_all) if logits is None else (pre, h_all, logits)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_gates, grad_h, grad_logits=None):
        W_hh, h0, gates_all, ah_all, h_all, *head = ctx.saved_tensors
        (B, H), T = h0.shape, h_all.shape[0] // h0.shape[0]
        with torch.autocast(h_all.device.type, enabled=False):
            dh_all = _dh_from_above(h_all, grad_h, grad_logits, head)
            dax_all = torch.empty_like(gates_all)  # dL/d(W_xh x + b_h)
            dah_all = torch.empty_like(ah_all)  # dL/d(W_hh h), its last third also dL/db_hn
            gates, ahs, daxs, dahs, dhs, hs = (buf.view(T, B, -1).unbind(0) for buf in
                                              (gates_all, ah_all, dax_all, dah_all, dh_all, h_all))
            tmp = torch.empty_like(h0)  # z_t dL/dh_t: the part of dL/dh_{t-1} that skips W_hh
            if _compiled_loop(ctx.kernels, T):
                ctx.kernels.gru_backward_loop(gates_all, ah_all, h0, h_all, dh_all, dax_all, dah_all, tmp,
                                              W_hh.contiguous(), _onednn(W_hh, B, T))
            else:
                add_dah_W_hh = accumulate_matmul(W_hh, B, transpose=False, calls=T)
                for t in range(T - 1, -1, -1):
                    r, z, n = gates[t].split(H, dim=1)
                    dr, dz, dn = daxs[t].split(H, dim=1)
                    dh, h_prev = dhs[t], (hs[t - 1] if t > 0 else h0)
                    _tanh_backward(torch.sub(dh, torch.mul(dh, z, out=tmp), out=dn), n, grad_input=dn)  # dh (1-z)
                    _sigmoid_backward(torch.sub(h_prev, n, out=dz).mul_(dh), z, grad_input=dz)
                    _sigmoid_backward(torch.mul(dn, ahs[t][:, 2 * H:], out=dr), r, grad_input=dr)
                    dahs[t][:, :2 * H] = daxs[t][:, :2 * H]
                    torch.mul(dn, r, out=dahs[t][:, 2 * H:])
                    if t > 0:
                        dhs[t - 1].add_(tmp)  # the path that skips W_hh: z h_{t-1}
                        add_dah_W_hh(dhs[t - 1], dahs[t])
            dh0 = tmp + dahs[0] @ W_hh if ctx.needs_input_grad[3] else None
            dW_hh = dah_all[B:].t() @ h_all[:-B]
            dW_hh.addmm_(dahs[0].t(), h0)
            db_hn = dah_all[:, 2 * H:].sum(0)
            return (dax_all, dW_hh, db_hn, dh0, *_head_grads(h_all, grad_logits, head), None)


def gru_step(a, ah, h_prev, h):
    """The GRU's step maths after its GEMM: a (B, 3H) = W_xh x_t + b_h becomes r, z, n in place, from
    ah (B, 3H) = W_hh h_{t-1} + (0, 0, b_hn); h (B, H) receives h_t, and is returned. The fused
    forward and one-step sampling (stepper.py) both run it."""
    H = h.shape[1]
    a[:, :2 * H].add_(ah[:, :2 * H]).sigmoid_()  # r, z
    r, z, n = a.split(H, dim=1)
    n.addcmul_(r, ah[:, 2 * H:]).tanh_()  # n = tanh(W_xn x + b_xn + r (W_hn h + b_hn))
    return torch.sub(h_prev, n, out=h).mul_(z).add_(n)  # h_t = n + z (h_{t-1} - n)


def gru_recurrence(pre, W_hh, b_hn, h0, W_hy=None, b_y=None, compiled=False):
    """The GRU over all t, time-major: pre (T*B, 3H) -> (h (T*B, H), h_T, logits), overwriting
    pre. logits as in rnn_recurrence; compiled as in lstm_recurrence."""
    kernels = kernels_for(pre) if compiled else None
    _, h, *logits = _GRURecurrence.apply(pre, W_hh, b_hn, h0, W_hy, b_y, kernels)
    return h, h[-h0.shape[0]:], logits[0] if logits else None
