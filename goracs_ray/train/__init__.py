"""LoRA fine-tuning on Ray Train (`TorchTrainer`, optional DeepSpeed ZeRO), checkpointed."""

from goracs_ray.train.config import TrainConfig
from goracs_ray.train.ds_config import deepspeed_config
from goracs_ray.train.finetune import finetune
from goracs_ray.train.worker import EpochGate, FaultInjection

__all__ = ["EpochGate", "FaultInjection", "TrainConfig", "deepspeed_config", "finetune"]
