import pytest
import torch

from attentionrnn.layers.query_term import per_channel


@pytest.mark.parametrize("memory_format", [torch.channels_last, torch.contiguous_format])
@pytest.mark.parametrize("op", [torch.add, torch.mul])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_per_channel_is_the_broadcast_op_in_the_maps_layout(memory_format, op, dtype):
    torch.manual_seed(0)
    x = torch.randn(3, 5, 4, 6, dtype=dtype).contiguous(memory_format=memory_format)
    u = torch.randn(3, 5, dtype=dtype)
    x1, u1 = x.clone().requires_grad_(), u.clone().requires_grad_()
    x2, u2 = x.clone().requires_grad_(), u.clone().requires_grad_()
    got, want = per_channel(x1, u1, op), op(x2, u2[:, :, None, None])
    assert torch.equal(got, want)
    assert got.is_contiguous(memory_format=memory_format)
    g = torch.randn(want.shape, dtype=dtype)
    got.backward(g)
    want.backward(g)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=0, atol=0)
    torch.testing.assert_close(u1.grad, u2.grad)


def test_per_channel_takes_single_pixel_maps():
    x, u = torch.randn(2, 3, 1, 1).contiguous(memory_format=torch.channels_last), torch.randn(2, 3)
    assert torch.equal(per_channel(x, u), x + u[:, :, None, None])
