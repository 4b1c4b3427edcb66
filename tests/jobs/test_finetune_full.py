"""Full-parameter fine-tuning (``lora: null``): the config, the driver's model check, resuming the whole
model from a checkpoint, and extract loading the exported model in place of an adapter.

The end-to-end run (train on Ray, export, extract, fit heads) is tests/jobs/test_qa_pipeline.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from jobs import _train_loop, extract, finetune
from jobs.schemas.extract import Config as ExtractConfig
from jobs.schemas.finetune import Config
from tests.tiny import save_tiny_model
from ue.artifacts import RunLayout
from ue.config import LoraConfig, load_config


@pytest.fixture(scope="module")
def decoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("m") / "llama", "llama", "causal_lm")


def config(decoder: Path, tmp_path: Path, overrides: list[str] | None = None) -> Config:
    data = {"data": {"name": "squad", "task": "causal_lm"}, "model": {"name_or_path": str(decoder),
                                                                        "task": "causal_lm"},
            "run": {"root": str(tmp_path), "run_id": "full"}}
    return load_config(Config, data=data, overrides=overrides or [])


def test_lora_null_means_every_weight_and_the_default_stays_lora(decoder: Path, tmp_path: Path):
    assert config(decoder, tmp_path).lora == LoraConfig()
    cfg = config(decoder, tmp_path, ["lora=null"])
    assert cfg.lora is None
    assert finetune.check_model(cfg, None) == 64  # built on the meta device, no LoRA applied


def test_a_full_model_checkpoint_resumes_every_weight(decoder: Path, tmp_path: Path):
    trained = AutoModelForCausalLM.from_pretrained(decoder)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.5)
    trained.save_pretrained(tmp_path / _train_loop.ADAPTER_DIR)
    fresh = AutoModelForCausalLM.from_pretrained(decoder)
    optimizer = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
               tmp_path / _train_loop.OPTIMIZER_FILE)
    backend = object.__new__(_train_loop.DDPBackend)  # load() needs no Ray Train context
    backend.peft_model, backend.optimizer, backend.scheduler = fresh, optimizer, scheduler
    backend.load(tmp_path)
    for (name, got), want in zip(fresh.state_dict().items(), trained.state_dict().values(), strict=True):
        assert torch.equal(got, want), name


def test_a_checkpoint_of_another_model_is_refused(decoder: Path, tmp_path: Path):
    other = save_tiny_model(tmp_path / "qwen", "qwen2", "causal_lm")
    AutoModelForCausalLM.from_pretrained(other).save_pretrained(tmp_path / "ckpt" / _train_loop.ADAPTER_DIR)
    backend = object.__new__(_train_loop.DDPBackend)
    backend.peft_model = AutoModelForCausalLM.from_pretrained(decoder)
    with pytest.raises(RuntimeError, match="does not match"):
        backend.load(tmp_path / "ckpt")


def test_extract_loads_an_exported_full_model_in_place_of_an_adapter(decoder: Path, tmp_path: Path):
    cfg = load_config(ExtractConfig, data={
        "data": {"name": "squad", "task": "causal_lm"}, "model": {"name_or_path": str(decoder), "task": "causal_lm"},
        "adapter": "finetune", "run": {"root": str(tmp_path), "run_id": "full"}})
    layout = RunLayout(tmp_path, "full")
    AutoModelForCausalLM.from_pretrained(decoder).save_pretrained(layout.adapter_dir)
    assert extract._weights(cfg, layout) == (str(layout.adapter_dir), None)
    (layout.adapter_dir / "adapter_config.json").write_text("{}")  # a PEFT adapter: the base model + it
    assert extract._weights(cfg, layout) == (str(decoder), str(layout.adapter_dir))
