"""`attention = "varlen"`: torch's flash varlen kernel on a GPU; on the CPU (here) it must
fall back to packed_sdpa, so that a packed row never attends across its examples."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from trainerd.config import TrainConfig
from trainerd.worker import attention, models, varlen


def test_varlen_on_the_cpu_equals_each_example_alone(tiny_model):
    impl = models.attention_implementation(TrainConfig(attention="varlen"))
    assert impl == varlen.NAME
    model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation=impl).eval()
    examples = [torch.arange(5, 12), torch.arange(20, 24), torch.arange(30, 39)]
    row = torch.cat(examples)[None]
    pos = torch.cat([torch.arange(len(e)) for e in examples])[None]
    with torch.no_grad():
        packed = model(input_ids=row, position_ids=pos, use_cache=False).logits[0]
        alone = torch.cat([model(input_ids=e[None], use_cache=False).logits[0] for e in examples])
    assert torch.allclose(packed, alone, atol=1e-5), (packed - alone).abs().max()
    models.for_saving(model)  # a published model carries no name only this process knows
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the varlen kernel needs CUDA")
def test_varlen_on_a_gpu_equals_packed_sdpa(tiny_model):
    row = torch.arange(5, 45)[None].cuda()
    pos = torch.cat([torch.arange(12), torch.arange(20), torch.arange(8)])[None].cuda()
    out = {}
    for impl in (varlen.register(), attention.register()):
        m = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation=impl, dtype=torch.bfloat16).cuda()
        with torch.no_grad():
            out[impl] = m(input_ids=row, position_ids=pos, use_cache=False).logits.float()
    assert torch.allclose(out[varlen.NAME], out[attention.NAME], atol=5e-2)
