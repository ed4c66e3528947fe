"""The Triton attention kernels against the torch reference (through Triton's interpreter on CPU)."""
import pytest
import torch

from conftest import tiny_spec_dict
from metanet.kernels import HAS_TRITON, attention, attention_backend, attention_reference
from metanet.search_spaces.operators import LocalGlobalDSM, make_block

pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="Triton is not importable on this machine")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def test_kernels_really_run_in_the_interpreter_without_a_gpu():
    if DEVICE == "cuda":
        pytest.skip("a GPU runs the compiled kernels")
    from triton.runtime.interpreter import InterpretedFunction

    from metanet.kernels import attention_triton
    fn = attention_triton._attn_fwd
    while hasattr(fn, "configs"):  # the autotuner around it (one config under the interpreter)
        assert len(fn.configs) == 1
        fn = fn.fn
    assert isinstance(fn, InterpretedFunction)


def _inputs(B, H, Nq, Nk, D, bias_shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g).to(DEVICE, dtype).requires_grad_()  # noqa: E731
    q, k, v = mk(B, H, Nq, D), mk(B, H, Nk, D), mk(B, H, Nk, D)
    shapes = {None: None, "h": (H, Nq, Nk), "1h": (1, H, Nq, Nk), "bh": (B, H, Nq, Nk)}
    bias = mk(*shapes[bias_shape]) if bias_shape else None
    return q, k, v, bias


def _run(backend, q, k, v, bias, grad_out, scale=None):
    out = attention(q, k, v, bias, scale=scale, backend=backend)
    inputs = [q, k, v] + ([bias] if bias is not None else [])
    return [out] + list(torch.autograd.grad(out, inputs, grad_out))


def _assert_close(got, want, rtol):
    for name, a, b in zip(["out", "dq", "dk", "dv", "dbias"], got, want):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        err = (a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-6)
        assert err <= rtol, f"{name}: relative error {err:.2e} > {rtol:.0e}"


@pytest.mark.parametrize("bias_shape", [None, "h", "1h", "bh"])
@pytest.mark.parametrize("nq, nk", [(50, 13), (13, 50), (49, 49)])
def test_fp32_matches_reference(bias_shape, nq, nk):
    q, k, v, bias = _inputs(2, 3, nq, nk, 48, bias_shape)
    grad_out = torch.randn(2, 3, nq, 48, device=DEVICE)
    _assert_close(_run("triton", q, k, v, bias, grad_out), _run("torch", q, k, v, bias, grad_out), 1e-4)


@pytest.mark.parametrize("d", [16, 32, 64, 128])
def test_head_dims(d):
    q, k, v, bias = _inputs(1, 2, 20, 37, d, "h")
    grad_out = torch.randn(1, 2, 20, d, device=DEVICE)
    _assert_close(_run("triton", q, k, v, bias, grad_out, scale=0.3),
                  _run("torch", q, k, v, bias, grad_out, scale=0.3), 1e-4)


def test_fp16_matches_reference_loosely():
    q, k, v, bias = _inputs(2, 2, 50, 13, 48, "1h", dtype=torch.float16)
    grad_out = torch.randn(2, 2, 50, 48, device=DEVICE, dtype=torch.float16)
    q32, k32, v32, b32 = (t.detach().float().requires_grad_() for t in (q, k, v, bias))
    want = [t.to(torch.float16) for t in _run("torch", q32, k32, v32, b32, grad_out.float())]
    _assert_close(_run("triton", q, k, v, bias, grad_out), want, 2e-2)


@pytest.mark.skipif(DEVICE == "cpu", reason="Triton's interpreter has no bf16")
def test_bf16_matches_reference_loosely():
    q, k, v, bias = _inputs(2, 2, 196, 196, 32, "h", dtype=torch.bfloat16)
    grad_out = torch.randn(2, 2, 196, 32, device=DEVICE, dtype=torch.bfloat16)
    q32, k32, v32, b32 = (t.detach().float().requires_grad_() for t in (q, k, v, bias))
    want = [t.to(torch.bfloat16) for t in _run("torch", q32, k32, v32, b32, grad_out.float())]
    _assert_close(_run("triton", q, k, v, bias, grad_out), want, 5e-2)


def test_bias_without_grad_and_non_contiguous_inputs():
    qkv = torch.randn(2, 17, 3, 2, 32, device=DEVICE)  # (B, N, 3, H, D) as a qkv projection lays it out
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    bias = torch.randn(2, 17, 17, device=DEVICE)
    torch.testing.assert_close(attention(q, k, v, bias, backend="triton"), attention_reference(q, k, v, bias),
                               rtol=1e-4, atol=1e-5)


def test_reference_gradcheck_float64():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, n, 4, generator=g, dtype=torch.float64, requires_grad=True) for n in (3, 5, 5))
    bias = torch.randn(2, 3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: attention_reference(*a), (q, k, v, bias))


def test_custom_op_registration_passes_opcheck():
    q, k, v, bias = _inputs(1, 2, 9, 7, 16, "h")
    torch.library.opcheck(torch.ops.metanet.attention.default, (q, k, v, bias, 0.25),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


def test_torch_flop_counter_counts_forward_and_backward():
    from torch.utils.flop_counter import FlopCounterMode
    q, k, v, bias = _inputs(2, 3, 16, 24, 32, "h")
    with FlopCounterMode(display=False) as counter:
        attention(q, k, v, bias, backend="triton").sum().backward()
    counts = counter.get_flop_counts()["Global"]
    fwd = 2 * 2 * 3 * 16 * 24 * 32 * 2  # two matmuls, 2 FLOPs per MAC
    assert counts[torch.ops.metanet.attention] == fwd
    assert counts[torch.ops.metanet.attention_backward] == 2 * fwd + fwd // 2


def test_fvcore_handle_counts_the_custom_op():
    from metanet.search_spaces.counter import attention_flop_jit
    from fvcore.nn import FlopCountAnalysis

    class Op(torch.nn.Module):
        def forward(self, q, k, v):
            return torch.ops.metanet.attention(q, k, v, None, 0.5)[0]

    q, k, v, _ = _inputs(2, 3, 16, 24, 32, None)
    analysis = FlopCountAnalysis(Op(), (q.detach(), k.detach(), v.detach()))
    analysis.set_op_handle("metanet::attention", attention_flop_jit).unsupported_ops_warnings(False)
    assert analysis.total() == 2 * 3 * 16 * 24 * 32 * 2


@pytest.mark.parametrize("op", ["attention", "attention_rpb", "xca"])
@pytest.mark.parametrize("stride", [1, 2])
def test_every_attention_operator_runs_through_the_kernel(op, stride):
    block = make_block(op, 32, 32 * stride, stride, expand=2, head_dim=16, drop_path=0.0,
                       grid=(8 // stride, 8 // stride)).to(DEVICE)
    _compare_module(block, torch.randn(2, 32, 8, 8, device=DEVICE))


def test_lg_dsm_runs_through_the_kernel():
    _compare_module(LocalGlobalDSM(32, 48, 2, head_dim=16).to(DEVICE).eval(), torch.randn(2, 32, 9, 9, device=DEVICE))


def _compare_module(module, x):
    results = []
    for backend in ("torch", "triton"):
        module.zero_grad()
        xb = x.clone().requires_grad_()
        with attention_backend(backend):
            y = module(xb)
            y.square().sum().backward()
        results.append((y.detach(), xb.grad, [p.grad.clone() for p in module.parameters() if p.grad is not None]))
    (y0, gx0, gp0), (y1, gx1, gp1) = results
    torch.testing.assert_close(y1, y0, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gx1, gx0, rtol=1e-4, atol=1e-4)
    for a, b in zip(gp1, gp0):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


def test_tracing_falls_back_to_the_reference():
    from metanet.search_spaces.metanet import MetaNet
    model = MetaNet(tiny_spec_dict(), num_classes=4, img_size=32).eval()
    x = torch.randn(1, 3, 32, 32)
    with attention_backend("triton"), torch.no_grad():
        traced = torch.jit.trace(model, x, check_trace=False)
        assert "metanet::attention" not in str(traced.graph)
        torch.testing.assert_close(traced(x), model(x), rtol=1e-4, atol=1e-5)


def test_bad_inputs_are_clear():
    q = torch.randn(1, 2, 5, 16)
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        attention(q, q, q, backend="cuda")
    with pytest.raises(ValueError, match=r"bias of shape \(3, 5, 5\) does not fit"):
        attention(q, q, q, torch.randn(3, 5, 5))
    with pytest.raises(ValueError, match="must be 4-D"):
        attention(q[0], q[0], q[0])


def test_torch_compile_traces_the_custom_op():
    q, k, v, bias = _inputs(1, 2, 13, 9, 16, "h")

    def f(q, k, v, bias):
        return attention(q, k, v, bias, backend="triton").sum()

    compiled = torch.compile(f, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v, bias), f(q, k, v, bias))


def test_kernels_import_with_torch_and_triton_alone():
    # A GPU box for benchmarks has torch and Triton only: nothing else may be needed to import the kernels.
    import subprocess
    import sys
    code = ("import sys\n"
            "for name in ('nni', 'fvcore', 'sklearn', 'pluggy', 'timm', 'einops', 'click', 'matplotlib'):\n"
            "    sys.modules[name] = None  # any import of these now fails\n"
            "import torch\n"
            "from metanet.kernels import attention\n"
            "q = torch.randn(1, 2, 5, 8)\n"
            "assert attention(q, q, q).shape == (1, 2, 5, 8)\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def _masked_bias(B, H, Nq, Nk, per_batch, seed=1):
    g = torch.Generator().manual_seed(seed)
    bias = torch.randn(B if per_batch else 1, H, Nq, Nk, generator=g)
    bias[..., 0, :] = float("-inf")                   # a fully masked row
    bias[..., 1, : Nk // 2] = float("-inf")           # a partly masked row
    bias[..., 2, 1::3] = float("-inf")                # masked entries scattered along a row
    bias[..., 3, Nk - 1] = float("-inf")              # the last key only (the peeled tile)
    return bias.to(DEVICE).requires_grad_()


@pytest.mark.parametrize("per_batch", [False, True])
@pytest.mark.parametrize("nk", [13, 70])  # one partial tile; a full tile then a partial one
def test_minus_inf_bias_masks_like_sdpa(per_batch, nk):
    q, k, v, _ = _inputs(2, 2, 9, nk, 32, None)
    bias = _masked_bias(2, 2, 9, nk, per_batch)
    grad_out = torch.randn(2, 2, 9, 32, device=DEVICE)
    got, want = _run("triton", q, k, v, bias, grad_out), _run("torch", q, k, v, bias, grad_out)
    assert all(torch.isfinite(t).all() for t in got)  # no NaN from -inf - -inf
    assert got[0][:, :, 0].abs().max() == 0 and got[1][:, :, 0].abs().max() == 0  # masked row: 0 out, 0 dq
    _assert_close(got, want, 1e-4)


def test_value_head_dim_other_than_query_head_dim():
    q, k, _, bias = _inputs(1, 2, 10, 12, 32, "h")
    v = torch.randn(1, 2, 12, 16, device=DEVICE)
    with pytest.raises(ValueError, match="needs v's head dim equal to q's, got Dv=16 and D=32"):
        attention(q, k, v, bias, backend="triton")
    # 'auto' sends it to the reference, which handles it
    torch.testing.assert_close(attention(q, k, v, bias), attention_reference(q, k, v, bias))


@pytest.mark.slow
@pytest.mark.parametrize("n", [49, 196, 784])
@pytest.mark.parametrize("prepadded", [False, True])
def test_bias_rows_padded_or_not_at_vision_sizes(n, prepadded):
    from metanet.kernels.attention_triton import padded_bias
    B, H, D = (2, 1, 16) if n == 784 else (3, 2, 16)
    q, k, v, bias = _inputs(B, H, n, n, D, "h")
    if prepadded:  # a view whose rows are already 16-element aligned is used in place, not copied
        bias = padded_bias(bias.detach().unsqueeze(0))[0].requires_grad_()
        assert bias.stride(-2) % 16 == 0 and padded_bias(bias.unsqueeze(0)).data_ptr() == bias.data_ptr()
    else:
        assert bias.stride(-2) == n  # 49 and 196: padded by the launcher; 784 is aligned as it is
    grad_out = torch.randn(B, H, n, D, device=DEVICE)
    _assert_close(_run("triton", q, k, v, bias, grad_out), _run("torch", q, k, v, bias, grad_out), 1e-4)


@pytest.mark.parametrize("batch", [1, 3, 5])
def test_broadcast_bias_gradient_is_summed_over_any_batch_on_chip(batch):
    q, k, v, bias = _inputs(batch, 2, 21, 67, 32, "1h")
    grad_out = torch.randn(batch, 2, 21, 32, device=DEVICE)
    _assert_close(_run("triton", q, k, v, bias, grad_out), _run("torch", q, k, v, bias, grad_out), 1e-4)


def test_fp16_with_masked_rows_and_padded_bias():
    q, k, v, _ = _inputs(2, 2, 49, 49, 32, None, dtype=torch.float16)
    bias = _masked_bias(1, 2, 49, 49, False).detach()[0].half().requires_grad_()
    grad_out = torch.randn(2, 2, 49, 32, device=DEVICE, dtype=torch.float16)
    q32, k32, v32, b32 = (t.detach().float().requires_grad_() for t in (q, k, v, bias))
    want = [t.to(torch.float16) for t in _run("torch", q32, k32, v32, b32, grad_out.float())]
    got = _run("triton", q, k, v, bias, grad_out)
    assert all(torch.isfinite(t).all() for t in got)
    _assert_close(got, want, 2e-2)


@pytest.mark.slow
def test_kernels_compile_for_hopper_without_spills():
    """The sm_90 ahead-of-time compile (no GPU needed): no spills, the forward's per-score cost at the 7x7
    grid as at 28x28 (padded bias rows), and a broadcast bias's modelled traffic far below the old design's."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = Path(__file__).parent.parent / "benchmarks" / "kernel_codegen.py"
    out = subprocess.run([sys.executable, str(script), "--quick", "--json"], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    assert {r["kernel"] for r in rows} == {"fwd", "bwd", "dbias"}
    assert all(r["spill_bytes"] == 0 and r["regs"] <= 255 for r in rows)
    # the one-launch backward keeps three 4-warp blocks per SM at D=32 (its register cap)
    assert all(r["blocks_per_sm"] >= 3 for r in rows if r["kernel"] == "bwd")
    fwd = {r["N"]: r["instr_per_score"] for r in rows if r["kernel"] == "fwd" and r["bias"] == "h"}
    assert 0 < fwd[49] <= 1.3 * fwd[784]
    big = next(r for r in rows if r["kernel"] == "fwd" and r["bias"] == "h" and r["N"] == 784)
    assert big["hbm_bytes_fwd_bwd"] <= 0.4 * big["hbm_bytes_fwd_bwd_today"]


@pytest.fixture
def launches(monkeypatch):
    """Every launch of the Triton kernels: (kernel, grid at 64x64 tiles, {argument: value})."""
    from metanet.kernels import attention_triton as at
    seen = []
    for name in ("_attn_fwd", "_attn_bwd", "_attn_bwd_dbias"):
        kernel = getattr(at, name)

        def spy(*args, grid, _run=kernel.run, _name=name, _names=kernel.arg_names, **kwargs):
            seen.append((_name, tuple(grid({"BLOCK_M": 64, "BLOCK_N": 64})), dict(zip(_names, args))))
            return _run(*args, grid=grid, **kwargs)
        monkeypatch.setattr(kernel, "run", spy)
    return seen


def _assert_matches_reference(q, k, v, bias, grad_out, dtype):
    """The kernel's output and gradients against the fp32 reference: within 1e-4 in fp32, 2e-2 in fp16."""
    got = _run("triton", q, k, v, bias, grad_out)
    if dtype == torch.float32:
        _assert_close(got, _run("torch", q, k, v, bias, grad_out), 1e-4)
    else:
        inputs = [t.detach().float().requires_grad_() if t is not None else None for t in (q, k, v, bias)]
        _assert_close(got, [t.to(dtype) for t in _run("torch", *inputs, grad_out.float())], 2e-2)


@pytest.mark.parametrize("dtype, nq, nk, bias_shape", [
    (torch.float32, 70, 130, "bh"),   # a full and a partial query tile; two full key tiles and a partial one
    (torch.float32, 130, 70, "h"),
    (torch.float32, 64, 128, None),   # no partial tile at all: only the steady-state loops
    (torch.float16, 70, 130, "1h"),
])
def test_backward_is_one_launch_of_dkdv_and_dq_programs(launches, dtype, nq, nk, bias_shape):
    B, H, D = 2, 2, 32
    q, k, v, bias = _inputs(B, H, nq, nk, D, bias_shape, dtype=dtype)
    grad_out = torch.randn(B, H, nq, D, device=DEVICE, dtype=dtype)
    _assert_matches_reference(q, k, v, bias, grad_out, dtype)
    bwd = [grid for name, grid, _ in launches if name == "_attn_bwd"]
    # axis 1: the dK/dV programs of every key tile, then the dQ programs of every query tile
    assert bwd == [(B * H, -(-nk // 64) + -(-nq // 64))]
    assert len([1 for name, _, _ in launches if name == "_attn_bwd_dbias"]) == (bias_shape in ("h", "1h"))


@pytest.mark.parametrize("group, groups, dtype", [
    (2, 3, torch.float32),   # batches 0-1, 2-3 and a short last group, 4: fp32 partials summed by the launcher
    (8, 1, torch.float32),   # one group spans the batch: the program writes the final gradient itself
    (2, 3, torch.float16),
])
def test_broadcast_bias_gradient_in_batch_groups(monkeypatch, launches, group, groups, dtype):
    from metanet.kernels import attention_triton
    monkeypatch.setattr(attention_triton, "DBIAS_BATCH_GROUP", group)
    B, H, Nq, Nk, D = 5, 2, 21, 67, 16
    q, k, v, bias = _inputs(B, H, Nq, Nk, D, "h", dtype=dtype)
    grad_out = torch.randn(B, H, Nq, D, device=DEVICE, dtype=dtype)
    _assert_matches_reference(q, k, v, bias, grad_out, dtype)
    (grid, args), = [(grid, args) for name, grid, args in launches if name == "_attn_bwd_dbias"]
    assert grid == (groups * H, 1, 2) and args["R"] == min(group, B)
    assert args["DB"].shape[0] == groups
    assert args["DB"].dtype == (dtype if groups == 1 else torch.float32)


def test_minus_inf_rows_with_full_query_tiles_and_batch_groups(monkeypatch):
    # masked rows 0-3 sit in a full query tile (the dK/dV programs' unmasked loop); three batches in groups of 2
    from metanet.kernels import attention_triton
    monkeypatch.setattr(attention_triton, "DBIAS_BATCH_GROUP", 2)
    q, k, v, _ = _inputs(3, 1, 70, 70, 16, None)
    bias = _masked_bias(3, 1, 70, 70, False)
    grad_out = torch.randn(3, 1, 70, 16, device=DEVICE)
    got, want = _run("triton", q, k, v, bias, grad_out), _run("torch", q, k, v, bias, grad_out)
    assert all(torch.isfinite(t).all() for t in got)
    assert got[0][:, :, 0].abs().max() == 0 and got[1][:, :, 0].abs().max() == 0
    _assert_close(got, want, 1e-4)


def test_batch_group_fills_the_gpu_without_a_batch_sized_buffer_at_large_shapes():
    from metanet.kernels.attention_triton import DBIAS_PROGRAMS_PER_SM, dbias_batch_group
    for B, H, N in ((64, 8, 784), (32, 4, 3136), (256, 16, 3136), (128, 8, 196), (256, 16, 49), (32, 4, 49)):
        R = dbias_batch_group(B, H, N, N, sms=132)
        G = -(-B // R)
        tiles = H * (-(-N // 64)) ** 2
        if N >= 784:
            assert R == B  # one group: the gradient written once, no partials
        else:  # enough programs, and the fp32 partials stay small
            assert G * tiles >= DBIAS_PROGRAMS_PER_SM * 132 * 0.9 or G == B
            assert G * H * N * N * 4 < 64 * 2**20


def test_aligned_bias_view_is_copied_when_its_storage_ends_before_the_padded_width():
    # the kernels read every bias row up to the padded width (16 elements): a view whose last row ends
    # its storage would be read past the end, so it is copied; one with room is used in place
    from metanet.kernels.attention_triton import padded_bias
    H, Nq, Nk = 2, 3, 13
    tight = torch.randn((H * Nq - 1) * 16 + Nk, device=DEVICE).as_strided((1, H, Nq, Nk), (0, Nq * 16, 16, 1))
    roomy = torch.randn(H * Nq * 16, device=DEVICE).as_strided((1, H, Nq, Nk), (0, Nq * 16, 16, 1))
    assert padded_bias(roomy).data_ptr() == roomy.data_ptr()
    copied = padded_bias(tight)
    assert copied.data_ptr() != tight.data_ptr() and copied.stride(-2) == 16
    torch.testing.assert_close(copied, tight)
