"""Config to Trainer: the precision and speed options reach TrainingArguments and the model."""

from trainerd.config import Config, TrainConfig
from trainerd.worker import attention, models
from trainerd.worker.train import training_arguments


def test_speed_options_reach_training_arguments(tmp_path):
    cfg = Config(base_model="x", train=TrainConfig(compile=True, optimizer="adamw_torch_fused",
                                                   gradient_checkpointing=True, grad_accum=3,
                                                   lr_scheduler="cosine", min_lr_ratio=0.2))
    args = training_arguments(cfg, tmp_path, seed=7)
    assert args.torch_compile and args.optim == "adamw_torch_fused" and args.gradient_checkpointing
    assert args.gradient_accumulation_steps == 3 and args.seed == args.data_seed == 7
    assert args.lr_scheduler_type == "cosine_with_min_lr" and args.lr_scheduler_kwargs == {"min_lr_rate": 0.2}
    assert args.ddp_find_unused_parameters is False and not args.logging_nan_inf_filter
    plain = training_arguments(Config(base_model="x"), tmp_path, seed=7)
    assert plain.optim == "adamw_torch" and not plain.torch_compile  # auto on a CPU: unfused


def test_attention_choice_on_a_cpu():
    assert models.attention_implementation(TrainConfig()) == attention.NAME  # packed -> per-example SDPA
    assert models.attention_implementation(TrainConfig(packing=False)) == "sdpa"
    assert models.attention_implementation(TrainConfig(attention="eager")) == "eager"
