"""Rendering and masking: labels from the chat template, token by token; packing that
never lets attention or loss cross examples."""


import pytest
import torch

from tests.conftest import write_jsonl
from trainerd.config import TrainConfig
from trainerd.worker.data import (
    DataError,
    char_limit,
    token_report,
    tokenize_example,
    tokenize_file,
)

CONV = {"messages": [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Two plus two?"},
    {"role": "assistant", "content": "Four."},
]}


def test_multi_turn_labels_are_exactly_the_assistant_turns(tok):
    [(ids, mask)] = tokenize_example(CONV, tok)  # a prefix-stable template: one sequence
    assert len(ids) == len(mask)
    trained = [tok.decode([i]) for i, m in zip(ids, mask, strict=True) if m]
    masked = tok.decode([i for i, m in zip(ids, mask, strict=True) if not m])
    # Every assistant token (content + end marker) is trained; nothing else is.
    assert "".join(trained) == "Hello!<|im_end|>Four.<|im_end|>"
    for text in ("Be brief.", "Hi there", "Two plus two?", "<|im_start|>assistant\n", "<|im_start|>user"):
        assert text in masked
    # Token by token: the mask is 1 exactly on the two assistant spans.
    spans, cur = [], None
    for k, m in enumerate([*mask, 0]):  # a span may end the sequence
        if m and cur is None:
            cur = k
        if not m and cur is not None:
            spans.append((cur, k))
            cur = None
    assert len(spans) == 2
    for (a, b), content in zip(spans, ("Hello!", "Four."), strict=True):
        assert tok.decode(ids[a:b]) == content + "<|im_end|>"


def test_prefix_diff_fallback_agrees_with_generation_markers(tok):
    """Templates without {% generation %} markers (most real models) get the same masks."""
    import copy
    import re

    plain = copy.deepcopy(tok)
    plain.chat_template = re.sub(r"{%-?\s*(end)?generation\s*-?%}", "", tok.chat_template)
    assert plain.chat_template != tok.chat_template and "endgeneration" not in plain.chat_template
    assert tokenize_example(CONV, plain) == tokenize_example(CONV, tok)


def test_prompt_completion_and_text(tok):
    [(ids, mask)] = tokenize_example({"prompt": "2+2=", "completion": " 4"}, tok)
    assert tok.decode([i for i, m in zip(ids, mask, strict=True) if m]) == " 4<|im_end|>"
    assert tok.decode([i for i, m in zip(ids, mask, strict=True) if not m]) == "2+2="
    [(ids, mask)] = tokenize_example({"text": "all of it"}, tok)
    assert all(mask) and tok.decode(ids) == "all of it<|im_end|>"


def test_overlength_policies(tok, tmp_path):
    long = {"messages": [{"role": "user", "content": "x " * 100}, {"role": "assistant", "content": "ok"}]}
    p = write_jsonl(tmp_path / "d.jsonl", [CONV, long, CONV])
    with pytest.raises(DataError, match=r"1 example\(s\) longer than train.max_seq_len = 100 tokens: line 2"):
        tokenize_file(p, tok, TrainConfig(max_seq_len=100, overlength="fail"))
    t = tokenize_file(p, tok, TrainConfig(max_seq_len=100, overlength="drop"))
    assert len(t) == 2 and t.dropped == 1 and list(t.lines) == [1, 3]
    t = tokenize_file(p, tok, TrainConfig(max_seq_len=100, overlength="truncate"))
    # The truncated example lost its assistant turn entirely: dropped, not trained on nothing.
    assert len(t) == 2 and t.dropped == 1


def test_token_report(tok, tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [CONV] * 3 + [{"text": "w " * 300}])
    r = token_report(tokenize_file(p, tok, TrainConfig(max_seq_len=256, overlength="drop")),
                     TrainConfig(max_seq_len=256, overlength="drop"))
    assert r["examples"] == 4 and r["sequences"] == 3 and r["dropped"] == 1
    assert r["trained_tokens"]["min"] > 0 and r["prompt_tokens"]["max"] > 0


def test_huge_example_is_bounded_by_characters_before_tokenizing(tok, tmp_path):
    """One 5 MB line costs no tokenization: over char_limit it gets the policy at once."""
    cfg = TrainConfig(max_seq_len=256, overlength="drop")
    huge = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "y" * 5_000_000}]}
    p = write_jsonl(tmp_path / "d.jsonl", [CONV, huge, CONV])
    seen: list[int] = []
    real = type(tok).__call__

    def spy(self, text, *a, **kw):  # the real tokenizer, watched: how long a text it is given
        seen.append(len(text) if isinstance(text, str) else 0)
        return real(self, text, *a, **kw)

    type(tok).__call__ = spy
    try:
        t = tokenize_file(p, tok, cfg)
        with pytest.raises(DataError, match=r"line 2 \(over \d+ characters\)"):
            tokenize_file(p, tok, cfg.model_copy(update={"overlength": "fail"}))
        cut = tokenize_file(p, tok, cfg.model_copy(update={"overlength": "truncate"}))
    finally:
        type(tok).__call__ = real
    assert len(t) == 2 and t.dropped == 1 and list(t.lines) == [1, 3]
    assert max(seen) <= char_limit(tok, 256) + 1000  # never the 5 MB text
    # truncate: cut to the bound first, then to max_seq_len tokens, and counted as truncated
    assert len(cut) == 3 and cut.truncated == 1 and cut.lengths().max() <= 256


def test_truncate_counts_a_prompt_too_long_as_dropped(tok, tmp_path):
    long_prompt = {"prompt": "w " * 400, "completion": " ok"}
    p = write_jsonl(tmp_path / "d.jsonl", [CONV, long_prompt])
    t = tokenize_file(p, tok, TrainConfig(max_seq_len=256, overlength="truncate"))
    assert len(t) == 1 and t.dropped == 1 and t.truncated == 0 and t.examples == 2


@pytest.mark.parametrize("attn", ["eager", "sdpa", "packed_sdpa"])
def test_packed_loss_equals_mean_of_per_example_losses(tiny_model, tok, attn):
    """The worker's packed batch (one row, position ids restarting per example) must give
    the token-weighted mean of running each example alone, and the same logits: nothing
    crosses an example boundary. The model keeps its default use_cache=True, as a loaded
    model does: the worker's collator must switch the cache off by itself."""
    from transformers import AutoModelForCausalLM

    from trainerd.config import Config
    from trainerd.worker.collate import collator

    if attn == "packed_sdpa":  # trainerd's per-example SDPA (worker/attention.py), the default
        from trainerd.worker import attention

        attn = attention.register()
    model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation=attn).eval()
    assert model.config.use_cache
    examples = []
    for conv in (CONV, {"messages": CONV["messages"][:3]}, {"prompt": "2+2=", "completion": " 4"}):
        [(ids, mask)] = tokenize_example(conv, tok)
        examples.append({"input_ids": ids, "labels": [i if m else -100 for i, m in zip(ids, mask, strict=True)]})
    batch = collator(Config(base_model="x"), tok, model)(examples)
    assert batch["input_ids"].shape[0] == 1  # one row: no padding at all
    # Logits only where a trained token is predicted (worker/train.py trained_logits_only).
    kept = batch["logits_to_keep"].tolist()
    assert len(kept) == sum(sum(x != -100 for x in ex["labels"][1:]) for ex in examples)
    with torch.no_grad():
        out = model(**batch)
        assert out.logits.shape[1] == len(kept)
        total, count, start, expected = 0.0, 0, 0, []
        for ex in examples:
            ids = torch.tensor([ex["input_ids"]])
            alone = model(input_ids=ids, labels=torch.tensor([ex["labels"]]))
            n = int((torch.tensor(ex["labels"][1:]) != -100).sum())
            total += float(alone.loss) * n
            count += n
            trained = [t for t in range(ids.shape[1] - 1) if ex["labels"][t + 1] != -100]
            assert [start + t for t in trained] == kept[len(expected):len(expected) + n]
            expected += [alone.logits[0, t] for t in trained]
            start += ids.shape[1]
        torch.testing.assert_close(out.logits[0], torch.stack(expected), rtol=1e-4, atol=1e-4)
        full = model(**{k: v for k, v in batch.items() if k not in ("logits_to_keep", "shift_labels")})
    torch.testing.assert_close(out.loss, torch.tensor(total / count), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.loss, full.loss, rtol=1e-6, atol=1e-6)  # trimming changes no loss


def test_packed_sdpa_segments_and_fallbacks(tiny_model):
    """Segments come from position ids alone; a padded batch or a cached decode step goes
    through transformers' own SDPA and gives the same logits as plain `sdpa`."""
    from transformers import AutoModelForCausalLM

    from trainerd.worker import attention

    assert attention.segments(torch.tensor([[0, 1, 2, 0, 1, 0, 0, 1, 2, 3]])) == [(0, 3), (3, 5), (5, 6), (6, 10)]
    ours = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation=attention.register()).eval()
    ref = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="sdpa").eval()
    ids = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=ids, attention_mask=mask).logits,
                                   ref(input_ids=ids, attention_mask=mask).logits)
        a = ours.generate(ids[:1], max_new_tokens=4, do_sample=False)
        b = ref.generate(ids[:1], max_new_tokens=4, do_sample=False)
    assert torch.equal(a, b)


def test_grouped_order_is_a_seeded_permutation_of_similar_length_steps():
    """train.group_by_length: every step's examples have similar lengths, the order is a pure
    function of (lengths, seed, examples per step) so each attempt sees the same steps, each
    mega-batch holds the examples of the plain order's, and the ragged last step stays last."""
    import numpy as np

    from trainerd.worker.data import MEGA_STEPS, data_order, grouped_order, training_order

    lengths = np.random.default_rng(3).integers(20, 400, 2003)
    order = grouped_order(lengths, 7, 8)
    assert sorted(order.tolist()) == list(range(2003))
    assert np.array_equal(order, grouped_order(lengths.copy(), 7, 8))  # resume: the same steps
    assert not np.array_equal(order, grouped_order(lengths, 8, 8))
    plain = data_order(2003, 7)
    mega = 8 * MEGA_STEPS
    for m in range(0, 2003, mega):
        assert set(order[m:m + mega]) == set(plain[m:m + mega])

    def padded(o):  # tokens a padded step computes
        return sum(len(o[i:i + 8]) * int(lengths[o[i:i + 8]].max()) for i in range(0, len(o), 8))
    assert padded(order) < 1.03 * lengths.sum() < 1.5 * lengths.sum() < padded(plain)
    tail = order[2000:]  # 2003 = 250 full steps + 3: those 3 are the epoch's last step
    assert set(tail) <= set(plain[mega * (2003 // mega):])
    steps = [lengths[order[i:i + 8]] for i in range(0, 2000, 8)]
    assert not all(a.max() >= b.max() for a, b in zip(steps, steps[1:], strict=False))  # steps shuffled

    assert np.array_equal(training_order(lengths, 7, 8, False), plain)
    assert np.array_equal(training_order(lengths, 7, 8, True), order)
    small = np.array([5, 1, 9])  # fewer examples than a step: one step, longest first
    assert grouped_order(small, 1, 8).tolist() == [2, 0, 1]
    assert grouped_order(np.zeros(0, dtype=np.int64), 1, 8).tolist() == []
