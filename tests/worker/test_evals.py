"""Probe evals: rendered like training, scored, bounded, and invisible to training; and the
job's TensorBoard event files."""

from __future__ import annotations

import json
import logging
import struct
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import chat_rows, cli, make_base, write_jsonl
from trainerd.jobs import EVALS, TENSORBOARD
from trainerd.paths import Layout
from trainerd.worker.data import tokenize_example
from trainerd.worker.evals import Probe, evaluate, load_probe

CONV = {"messages": [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Two plus two?"},
    {"role": "assistant", "content": "Four."},
]}


@pytest.fixture(scope="module")
def model(tiny_model):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    # Attention dropout: a forward left in train mode would draw random numbers.
    return AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="eager", attention_dropout=0.1)


def write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_probe_set_is_rendered_like_training(tmp_path, tok):
    rows = [CONV, {"prompt": "2+2=", "completion": " 4"}, {"text": "plain text, loss only"},
            "not json", {"messages": [{"role": "user", "content": "no answer"}]},
            {"prompt": "long " * 300, "completion": "x"}, *chat_rows(3)]
    probe = load_probe(write(tmp_path / "probe.jsonl", rows), tok, max_seq_len=256, k=3)
    assert probe is not None and len(probe.sha) == 16
    # Loss examples: exactly what training would train on (valid, not over-length).
    assert probe.examples[:1] == tokenize_example(CONV, tok)
    assert len(probe) == 6  # 3 bad lines left out, named in the log
    # Generation: the conversation before its last assistant turn, with the generation prompt.
    line, ids, expected = probe.prompts[0]
    assert line == 1 and expected == "Four."
    text = tok.decode(ids)
    assert text.endswith("Two plus two?<|im_end|>\n<|im_start|>assistant\n") and "Hello!" in text
    assert probe.prompts[1][1:] == (tok("2+2=", add_special_tokens=False)["input_ids"], " 4")
    assert [p[0] for p in probe.prompts] == [1, 2, 7]  # `text` has no answer to compare; K = 3
    assert load_probe(tmp_path / "absent.jsonl", tok, 256, 3) is None
    assert load_probe(write(tmp_path / "bad.jsonl", ["{}"]), tok, 256, 3) is None


def test_evaluate_scores_and_leaves_no_trace(tok, model):
    conv = chat_rows(2, "probe")
    examples = [s for c in conv for s in tokenize_example(c, tok)]
    prompt = tok.apply_chat_template(conv[0]["messages"][:1], tokenize=True, add_generation_prompt=True,
                                     return_dict=True)["input_ids"]
    model.train()
    rng = torch.get_rng_state()
    first = evaluate(model, tok, Probe("sha", examples, [(1, list(prompt), "unlikely")]), 8, 60)
    assert model.training and torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in model.parameters())
    assert first["complete"] and first["examples"] == 2 and first["generated"] == 1

    # The loss is the mean over every trained token of the set, as in training.
    with torch.no_grad():
        model.eval()
        nll, n = 0.0, 0
        for ids, mask in examples:
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
            target = torch.tensor([i if m else -100 for i, m in zip(ids[1:], mask[1:], strict=True)])
            nll += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
            n += int((target != -100).sum())
        model.train()
    assert first["loss"] == pytest.approx(nll / n, rel=1e-5) and first["tokens"] == n

    # The model's own greedy answer, given as the expected one, is an exact match.
    answer = first["samples"][0]["generated"]
    same = evaluate(model, tok, Probe("sha", examples, [(1, list(prompt), answer)]), 8, 60)
    assert same["exact_match"] == 1.0 and same["similarity"] == 1.0
    assert first["exact_match"] == 0.0 and 0 <= first["similarity"] < 1


def test_evaluate_stops_at_its_time_bound_and_on_stop(tok, model):
    probe = Probe("sha", [s for c in chat_rows(3) for s in tokenize_example(c, tok)], [])
    late = evaluate(model, tok, probe, 8, max_seconds=1e-9)
    assert late["examples"] == 0 and not late["complete"] and late["stopped_by"] == "max_seconds"
    stopped = evaluate(model, tok, probe, 8, 60, stop=True)
    assert stopped["loss"] is None and stopped["stopped_by"] == "stop"


def test_a_failing_eval_is_a_row_and_a_log_line_not_a_failed_job(tmp_path, tok, caplog):
    from types import SimpleNamespace

    from trainerd.config import Config, EvalConfig
    from trainerd.worker.evals import ProbeEval

    cfg = Config(base_model="unused", eval=EvalConfig(every_steps=3))
    probe = Probe("sha", [s for c in chat_rows(2) for s in tokenize_example(c, tok)], [])
    cb = ProbeEval(tmp_path, 1, probe, tok, cfg, stop=False)
    broken = torch.nn.Linear(2, 2)  # has parameters, but no forward(input_ids=..., labels=...)
    state = SimpleNamespace(global_step=3, max_steps=8, is_world_process_zero=True)
    with caplog.at_level(logging.WARNING, "trainerd.worker.evals"):
        cb.on_step_end(None, state, None, model=broken)
    [row] = [json.loads(line) for line in (tmp_path / EVALS).read_text().splitlines()]
    assert row["step"] == 3 and row["loss"] is None and "TypeError" in row["error"]
    assert "failed; training goes on" in caplog.text and broken.training
    state.global_step = 4  # not due (every 3 steps, and not the last)
    cb.on_step_end(None, state, None, model=broken)
    assert len((tmp_path / EVALS).read_text().splitlines()) == 1


def test_no_tensorboard_package_is_a_log_line(tmp_path, monkeypatch, caplog):
    from trainerd.worker.train import tensorboard_callback

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import -> ImportError
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    with caplog.at_level(logging.INFO, "trainerd.worker"):  # the writer is made in worker.lineboard
        assert tensorboard_callback(tmp_path) is None
    assert "no TensorBoard event files" in caplog.text
    assert not (tmp_path / TENSORBOARD).exists()


def scalars(event_file: Path) -> dict[str, list[tuple[int, float]]]:
    """Scalars of a TFRecord event file, parsed with tensorboardX's Event message."""
    from tensorboardX.proto.event_pb2 import Event

    out: dict[str, list[tuple[int, float]]] = {}
    data, i = event_file.read_bytes(), 0
    while i < len(data):
        (n,) = struct.unpack("<Q", data[i:i + 8])  # length, its crc, the record, its crc
        ev = Event.FromString(data[i + 12:i + 12 + n])
        i += 12 + n + 4
        for v in ev.summary.value:
            if v.WhichOneof("value") == "simple_value":
                out.setdefault(v.tag, []).append((ev.step, v.simple_value))
    return out


@pytest.mark.slow
def test_a_job_with_evals_ends_with_the_same_weights_as_one_without(tmp_path, tiny_model):
    from safetensors.torch import load_file

    from trainerd.ledger import read_evals

    # 32 examples / micro-batch 4 = 8 steps; evals at 3, 6 and 8 (the end). LoRA dropout makes
    # training draw random numbers, so an eval that drew any (or left dropout on) would show.
    extra = "[eval]\nevery_steps = 3\ngenerate_examples = 4\nmax_new_tokens = 12\n"
    bases = {}
    for name in ("off", "on"):
        base = make_base(tmp_path / name, tiny_model, extra)
        with open(base / "trainerd.toml", "a") as f:
            f.write("[train.lora]\ndropout = 0.1\n")
        write_jsonl(base / "inbox" / "job.jsonl", chat_rows(32, "alpha"))
        bases[name] = Layout.at(base)
    write(bases["on"].base / "probe.jsonl", [*chat_rows(6, "alpha"), {"prompt": "Q1:", "completion": " A1"}])
    for layout in bases.values():
        cli("run", "--base-dir", layout.base, "--once")

    weights = {n: load_file(str(lay.models / "v0001" / "adapter_model.safetensors")) for n, lay in bases.items()}
    assert weights["on"].keys() == weights["off"].keys()
    for k in weights["on"]:
        assert torch.equal(weights["on"][k], weights["off"][k]), k

    jobs = {n: next(lay.done.iterdir()) for n, lay in bases.items()}
    rows = [json.loads(line) for line in (jobs["on"] / EVALS).read_text().splitlines()]
    assert [(r["step"], r["final"]) for r in rows] == [(3, False), (6, False), (8, True)]
    assert all(r["complete"] and r["examples"] == 7 and r["generated"] == 4 for r in rows)
    assert not (jobs["off"] / EVALS).exists()
    # The supervisor copied them into state.db at the end of the attempt.
    db = read_evals(bases["on"].state_db)
    assert [(r["job_id"], r["step"], r["final"]) for r in db] == [(jobs["on"].name, s, s == 8) for s in (3, 6, 8)]
    assert db[-1]["loss"] == pytest.approx(rows[-1]["loss"]) and len(db[-1]["samples"]) == 4

    # TensorBoard: one event file per attempt in the job dir, with the loss of every step.
    [events] = (jobs["on"] / TENSORBOARD).glob("events.out.tfevents.*")
    tb = scalars(events)
    assert [s for s, _ in tb["train/loss"]] == list(range(1, 9))
    metrics = [json.loads(line) for line in (jobs["on"] / "metrics.jsonl").read_text().splitlines()]
    assert [v for _, v in tb["train/loss"]] == pytest.approx([m["loss"] for m in metrics], rel=1e-6)
    assert [s for s, _ in tb["probe/loss"]] == [3, 6, 8]

    # The cost, for the record (pytest -s shows it): the attempt's wall time (process start
    # and model load included) and the span from step 1 to step 8 (the evals at 3 and 6 and
    # the final one happen inside it).
    def times(job: Path) -> tuple[float, float]:
        a = json.loads((job / "job.json").read_text())["attempts"][-1]
        ts = [json.loads(line)["ts"] for line in (job / "metrics.jsonl").read_text().splitlines()]
        return a["ended_at"] - a["started_at"], ts[-1] - ts[0]

    (wall_off, span_off), (wall_on, span_on) = times(jobs["off"]), times(jobs["on"])
    spent = [r["seconds"] for r in rows]
    print(f"\nprobe eval: {len(spent)} evals of 7 examples + 4 greedy answers x 12 tokens: "
          f"{sum(spent) / len(spent):.2f} s each (max {max(spent):.2f}); steps 1-8 took {span_off:.2f} s "
          f"without evals, {span_on:.2f} s with ({(span_on - span_off) / span_off:+.0%}); attempt wall "
          f"{wall_off:.1f} s vs {wall_on:.1f} s ({(wall_on - wall_off) / wall_off:+.0%}); "
          f"{sum(spent) / wall_on:.0%} of the attempt was evals")


@pytest.mark.parametrize("attn", ["eager", "sdpa", "packed_sdpa"])
def test_packed_losses_equal_one_forward_per_example(tiny_model, tok, attn, monkeypatch):
    """The packed eval rows (train.packing) score every example as its own forward does,
    also when the logits budget splits them over several rows."""
    from transformers import AutoModelForCausalLM

    from trainerd.worker import evals

    if attn == "packed_sdpa":
        from trainerd.worker import attention

        attn = attention.register()
    m = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation=attn).eval()
    examples = [ex for conv in (CONV, *chat_rows(9, "pk"), {"prompt": "2+2=", "completion": " 4"})
                for ex in tokenize_example(conv, tok)]
    examples.append((examples[0][0], [0] * len(examples[0][0])))  # nothing to score
    with torch.no_grad():
        alone = evals.example_losses(m, examples)
        packed = evals.example_losses(m, examples, packed=True)
        monkeypatch.setattr(evals, "PACKED_LOGITS", m.config.vocab_size * 60)  # ~3 examples a row
        rows = evals.example_losses(m, examples, packed=True)
    assert [n for _, n in packed] == [n for _, n in alone] == [n for _, n in rows]
    assert alone[-1] == (0.0, 0)
    for (a, _), (b, _), (c, _) in zip(alone, packed, rows, strict=True):
        assert b == pytest.approx(a, rel=1e-5, abs=1e-5) and c == pytest.approx(a, rel=1e-5, abs=1e-5)
