"""jobs.finetune: shipped configs, bad configs (failing before any worker), training under DeepSpeed
ZeRO-2 with 2 Ray workers, the exported adapter, the MiniLM SST-2 demo, and resuming a stopped run.

Models are tiny random checkpoints (tests/tiny.py) or the packaged MiniLM; data are small slices of
the real datasets under ``$UE_DATA_DIR`` (../shared/data beside the checkout when unset).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import ray
import torch

from jobs import _train_loop, finetune
from jobs.schemas.finetune import DEEPSPEED_DIR, LOSS_NAMES, Config
from tests.tiny import save_tiny_model
from ue.config import ConfigError, load_config
from ue.data import DataError
from ue.losses import LOSSES

CONFIGS = Path(finetune.__file__).parent / "configs" / "finetune"
DATA = Path(os.environ.get("UE_DATA_DIR") or Path(__file__).resolve().parents[3] / "shared" / "data")


@pytest.fixture(scope="module", autouse=True)
def offline_env() -> Any:
    """Offline model loading and the data root, set before Ray starts so its workers inherit them."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("UE_DATA_DIR", str(DATA))
        yield


@pytest.fixture(scope="module")
def ray_cluster(offline_env: Any) -> Any:
    """One local Ray for the module (the jobs reuse it); 2 CPUs as on the CI machine. The Train
    controller checks on its workers every 0.2 s (not 2 s), so a checkpoint is registered right
    after it is reported and the resume tests can stop a run between two epochs."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        yield
        ray.shutdown()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {task: save_tiny_model(root / task, "llama", task) for task in ("causal_lm", "sequence_classification")}


@pytest.fixture(scope="module")
def sst2_slice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """256 train / 32 val SST-2 sentences with a per-row ``uncertainty`` in [0, 1] for UAL."""
    folder = tmp_path_factory.mktemp("sst2_slice")
    rows = [json.loads(line) for line in (DATA / "sst2" / "train_sentences.jsonl").open()][:288]
    for i, row in enumerate(rows):
        row["uncertainty"] = (i % 10) / 9
    _write_jsonl(folder / "train.jsonl", rows[:256])
    _write_jsonl(folder / "validation.jsonl", rows[256:])
    return folder


@pytest.fixture(scope="module")
def qa_slice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 train / 32 val NQ-open questions (question + answers, turned into prompt/answer rows)."""
    folder = tmp_path_factory.mktemp("qa_slice")
    rows = [json.loads(line) for line in (DATA / "nq_open" / "test_subsample_1k.jsonl").open()][:96]
    _write_jsonl(folder / "train.jsonl", rows[:64])
    _write_jsonl(folder / "validation.jsonl", rows[64:])
    return folder


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def tiny_config(root: Path, model_dir: Path, data_dir: Path, *, task: str = "sequence_classification",
                **sections: Any) -> Config:
    """A config for a tiny model on a data slice: 2 workers, ZeRO-2, 3 epochs, unless ``sections`` say otherwise."""
    base = {
        "data": {"name": str(data_dir), "task": task, "max_length": 32},
        "model": {"name_or_path": str(model_dir), "task": task},
        "lora": {"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]},
        "train": {"epochs": 3, "batch_size": 8, "lr": 5e-3, "max_failures": 0},
        "resources": {"num_workers": 2, "cpus_per_worker": 0.5},
        "deepspeed": "zero2",
        "run": {"root": str(root), "run_id": "tiny"},
    }
    if task != "causal_lm":
        base["model"]["num_labels"] = 2
    return load_config(Config, data={k: {**base.get(k, {}), **v} if isinstance(v, dict) else v
                                     for k, v in {**base, **sections}.items()})


def history(run_dir: Path) -> list[dict[str, Any]]:
    return json.loads((run_dir / "finetune" / "metrics.json").read_text())["epochs"]


# -- configs ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(path: Path) -> None:
    cfg = load_config(Config, path)
    if cfg.resources.use_gpu:  # the 7B/13B settings of the papers
        assert (cfg.model.dtype, cfg.model.gradient_checkpointing, cfg.deepspeed) == ("bfloat16", True, "zero3")


def test_shipped_set_is_complete() -> None:
    assert {p.stem for p in CONFIGS.glob("*.yaml")} >= {
        "minilm_sst2", "llama2_7b_seqcls", "llama2_13b_seqcls", "qwen25_7b_seqcls", "llama2_7b_ua_clm"}
    assert {p.stem for p in DEEPSPEED_DIR.glob("*.json")} == {"zero2", "zero3"}
    assert set(LOSS_NAMES) == set(LOSSES.names())


def test_deepspeed_auto_values_are_filled_from_the_config(tmp_path: Path, models: dict[str, Path],
                                                           sst2_slice: Path) -> None:
    cfg = tiny_config(tmp_path, models["sequence_classification"], sst2_slice, deepspeed="zero3",
                      train={"batch_size": 4, "grad_accum": 2}, model={"dtype": "bfloat16"})
    ds = finetune.deepspeed_config(cfg, hidden_size=64)
    shipped = json.loads((DEEPSPEED_DIR / "zero3.json").read_text())
    batches = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size")
    assert [ds[key] for key in batches] == [4, 2, 16]
    assert ds["bf16"]["enabled"] is True and ds["fp16"]["enabled"] is False
    zero, shipped_zero = ds["zero_optimization"], shipped["zero_optimization"]
    assert zero["stage3_max_live_parameters"] == shipped_zero["stage3_max_live_parameters"]
    assert zero["stage3_param_persistence_threshold"] == 640  # 10 * hidden size, as the HF Trainer fills it
    assert "auto" not in json.dumps(ds)


def test_ua_clm_beta_schedule_comes_from_the_config(tmp_path: Path, models: dict[str, Path],
                                                    sst2_slice: Path) -> None:
    """The mixed objective's weights are config keys (so Tune can search them): CE alone while
    beta_early is 0, CE + 2 * UA-CLM after the switch."""
    cfg = tiny_config(tmp_path, models["causal_lm"], sst2_slice, task="causal_lm",
                      train={"loss": "ua_clm", "mix_ce": True, "beta_early": 0.0, "beta_late": 2.0, "beta_switch": 0.5})
    loss = _train_loop.build_loss(cfg, total_steps=10)
    logits = torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(0))
    batch = {"labels": torch.tensor([[1, 2, 3, 4, 5], [-100, 6, 1, 0, 2]])}
    ce = LOSSES["ce"](logits, batch["labels"])
    ua = LOSSES["ua_clm"](logits, batch["labels"])
    assert loss(logits, batch, 4).item() == pytest.approx(ce.item(), rel=1e-6)
    assert loss(logits, batch, 5).item() == pytest.approx((ce + 2.0 * ua).item(), rel=1e-6)
    with pytest.raises(ConfigError, match=r"train\.beta_switch"):
        tiny_config(tmp_path, models["causal_lm"], sst2_slice, task="causal_lm",
                    train={"loss": "ua_clm", "mix_ce": True, "beta_switch": 1.5})


# -- bad configs fail before any worker starts -----------------------------------------------------

def test_unknown_loss_is_rejected_by_the_schema(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"train\.loss: not an allowed value.*did you mean 'ual'"):
        load_config(Config, data={"data": {"name": "sst2"}, "model": {"name_or_path": "m"}, "train": {"loss": "uall"}})


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make starting Ray an error: a config check that passes it came too late."""
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("Ray started before the config was fully checked")

    monkeypatch.setattr(finetune, "init_ray", refuse)


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory: pytest.TempPathFactory, sst2_slice: Path) -> Path:
    """The SST-2 slice with its label column called ``sentiment``."""
    folder = tmp_path_factory.mktemp("unlabelled")
    for split in ("train", "validation"):
        rows = [json.loads(line) for line in (sst2_slice / f"{split}.jsonl").open()]
        _write_jsonl(folder / f"{split}.jsonl", [{"text": r["text"], "sentiment": r["label"]} for r in rows])
    return folder


@pytest.mark.parametrize(("change", "error", "message"), [
    ({"lora": {"target_modules": ["q_proj", "query"]}}, ValueError, r"lora\.target_modules: \['query'\] not found"),
    ({"data": {"name": "unlabelled", "splits": {"train": "train"}}}, DataError,
     r"needs column 'label'.*data\.columns\.label="),
    ({"data": {"name": "sst5", "splits": {"train": "train"}}}, DataError,
     r"label 4 out of range \[0, 2\) for model\.num_labels=2"),
    ({"train": {"loss": "ual"}}, ConfigError, r"train\.loss: ual with .* needs an `uncertainty`"),
    ({"train": {"loss_params": {"eps": 0.1}}}, ConfigError, r"train\.loss_params: ce takes no \['eps'\]"),
    ({"train": {"loss": "ual", "loss_params": {"eps_max": 2.0}}}, ConfigError, r"train\.loss_params: need 0 <= eps"),
    ({"model": {"name_or_path": "/no/such/model"}}, ConfigError, r"model\.name_or_path: cannot load"),
    ({"resources": {"num_workers": 100}}, ConfigError, r"resources\.num_workers: more workers than rows"),
], ids=["lora-target", "label-column", "label-range", "ual-uncertainty", "loss-param", "loss-value", "model",
        "workers"])
def test_bad_config_fails_before_ray_starts(no_ray: None, tmp_path: Path, models: dict[str, Path], unlabelled: Path,
                                            change: dict[str, Any], error: type[Exception], message: str) -> None:
    # Real SST-2 (no uncertainty column) and SST-5 (5 classes) under $UE_DATA_DIR; a 2-class model.
    data = {"name": "sst2", "splits": {"train": "train_sentences"}, "max_rows": {"train": 64, "val": 64}}
    if change.get("data", {}).get("name") == "unlabelled":
        change["data"]["name"] = str(unlabelled)
    cfg = tiny_config(tmp_path, models["sequence_classification"], DATA,
                      data={**data, **change.pop("data", {})}, **change)
    with pytest.raises(error, match=message):
        finetune.run(cfg)
    assert json.loads((tmp_path / "tiny" / "manifest.json").read_text())["stages"]["finetune"]["status"] == "failed"


# -- training under DeepSpeed ZeRO-2 with 2 workers -----------------------------------------------

@pytest.fixture(scope="module")
def seq_cls_ce_run(ray_cluster: Any, tmp_path_factory: pytest.TempPathFactory, models: dict[str, Path],
                   sst2_slice: Path) -> tuple[Config, Path, str]:
    root = tmp_path_factory.mktemp("runs")
    cfg = tiny_config(root, models["sequence_classification"], sst2_slice)
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        finetune.run(cfg)
    return cfg, root / "tiny", stdout.getvalue()


@pytest.mark.slow
def test_sequence_classification_ce_zero2_learns(seq_cls_ce_run: tuple[Config, Path, str]) -> None:
    cfg, run_dir, stdout = seq_cls_ce_run
    epochs = history(run_dir)
    assert [e["step"] for e in epochs] == [16, 32, 48]  # 256 rows / 2 workers / batch 8 = 16 steps an epoch
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert [line.split(":")[0] for line in stdout.splitlines() if line.startswith("finetune epoch")] == [
        "finetune epoch 1/3 step 16", "finetune epoch 2/3 step 32", "finetune epoch 3/3 step 48"]
    assert list((run_dir / "finetune" / "tensorboard").glob("events.out.tfevents.*"))
    manifest = json.loads((run_dir / "manifest.json").read_text())["stages"]["finetune"]
    assert manifest["status"] == "done" and manifest["outputs"]["adapter"] == str(run_dir / "finetune" / "adapter")
    assert (run_dir / "finetune" / "config.yaml").is_file()


@pytest.mark.slow
def test_saved_adapter_loads_with_plain_peft_and_reproduces_the_job(seq_cls_ce_run: tuple[Config, Path, str]) -> None:
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ue.heads.modules import load_classifier
    from ue.tokenize import last_token_index

    cfg, run_dir, _ = seq_cls_ce_run
    best = json.loads((run_dir / "finetune" / "metrics.json").read_text())["best"]
    base = AutoModelForSequenceClassification.from_pretrained(cfg.model.name_or_path, num_labels=2)
    model = PeftModel.from_pretrained(base, str(run_dir / "finetune" / "adapter")).eval()
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.name_or_path)
    rows = [json.loads(line) for line in (Path(cfg.data.name) / "validation.jsonl").open()]
    enc = tokenizer([r["text"] for r in rows], truncation=True, max_length=cfg.data.max_length, padding=True,
                    return_tensors="pt")
    labels = torch.tensor([r["label"] for r in rows])
    with torch.no_grad():
        logits = model(**enc).logits
        hidden = model.get_base_model().model(**enc).last_hidden_state
    # The job's val loss and accuracy of the best epoch, recomputed from the exported files alone.
    assert torch.nn.functional.cross_entropy(logits, labels).item() == pytest.approx(best["val_loss"], rel=1e-5)
    assert (logits.argmax(-1) == labels).float().mean().item() == pytest.approx(best["val_accuracy"])
    # The exported classification module maps the last token's hidden state to the same logits.
    classifier = load_classifier(run_dir / "finetune").eval()
    h = hidden[torch.arange(len(rows)), last_token_index(enc["attention_mask"])]
    torch.testing.assert_close(classifier(h), logits, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_sequence_classification_ual_zero2_learns(ray_cluster: Any, tmp_path: Path, models: dict[str, Path],
                                                  sst2_slice: Path) -> None:
    cfg = tiny_config(tmp_path, models["sequence_classification"], sst2_slice,
                      train={"loss": "ual", "loss_params": {"eps_min": 0.0, "eps_max": 0.2}})
    finetune.run(cfg)
    epochs = history(tmp_path / "tiny")
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]


@pytest.fixture(scope="module")
def confident_causal_lm(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random Llama with its output layer scaled up 30x, so it predicts peaked and wrong:
    the case UA-CLM is for (it raises the entropy of confidently wrong tokens). A plain random model
    is near-uniform (entropy ~ log V) where UA-CLM is already ~0 and has nothing to learn."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("confident_llama")
    model = AutoModelForCausalLM.from_pretrained(models["causal_lm"])
    with torch.no_grad():
        model.lm_head.weight.mul_(30.0)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(models["causal_lm"]).save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_causal_lm_ua_clm_zero2_learns(ray_cluster: Any, tmp_path: Path, confident_causal_lm: Path,
                                       qa_slice: Path) -> None:
    cfg = tiny_config(tmp_path, confident_causal_lm, qa_slice, task="causal_lm",
                      lora={"target_modules": ["q_proj", "v_proj", "up_proj", "down_proj"]},
                      train={"loss": "ua_clm", "batch_size": 4, "select_metric": "val_accuracy"})
    finetune.run(cfg)
    epochs = history(tmp_path / "tiny")
    assert [e["step"] for e in epochs] == [8, 16, 24]  # 64 rows / 2 workers / batch 4
    assert epochs[-1]["train_loss"] < 0.5 * epochs[0]["train_loss"]
    assert (tmp_path / "tiny" / "finetune" / "adapter" / "adapter_config.json").is_file()
    assert not (tmp_path / "tiny" / "finetune" / "classifier.json").exists()


# -- the CPU demo ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_minilm_sst2_reaches_80_percent_test_accuracy(ray_cluster: Any, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ue.models import resolve_model_path

    cfg = load_config(Config, CONFIGS / "minilm_sst2.yaml", overrides=[f"run.root={tmp_path}"])
    finetune.run(cfg)
    path = resolve_model_path(cfg.model.name_or_path)
    model = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(path, num_labels=2),
                                      str(tmp_path / cfg.run.run_id / "finetune" / "adapter")).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    rows = [json.loads(line) for line in (DATA / "sst2" / "test.jsonl").open()]
    correct = 0
    with torch.no_grad():
        for i in range(0, len(rows), 256):
            chunk = rows[i:i + 256]
            enc = tokenizer([r["text"] for r in chunk], truncation=True, max_length=cfg.data.max_length,
                            padding=True, return_tensors="pt")
            correct += (model(**enc).logits.argmax(-1) == torch.tensor([r["label"] for r in chunk])).sum().item()
    assert correct / len(rows) >= 0.80


# -- resuming --------------------------------------------------------------------------------------

def _kill_train_workers_after_first_checkpoint(cfg: Config, attempt: threading.Thread) -> None:
    """Wait until Ray Train has registered the run's first checkpoint, then kill its workers (the
    Ray Train worker processes of the Ray this test process started)."""
    storage = Path(cfg.run.root) / cfg.run.run_id / "finetune" / "ray"
    while not list(storage.glob("*/checkpoint_manager_snapshot.json")) and attempt.is_alive():
        time.sleep(0.02)
    for process in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            if " ".join(process.cmdline()).startswith("ray::RayTrainWorker"):
                process.kill()


def _run_in_thread(cfg: Config) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def attempt() -> None:
        try:
            finetune.run(cfg)
        except BaseException as e:  # noqa: BLE001 (the test inspects it)
            errors.append(e)

    thread = threading.Thread(target=attempt)
    thread.start()
    return thread, errors


def _assert_continued_like(run_dir: Path, uninterrupted: Path) -> dict[str, Any]:
    """The resumed run took the same steps and ends with the same adapter and metrics as a run that
    was never interrupted: weights, optimiser, schedule, data order and dropout were all restored."""
    from safetensors.torch import load_file

    metrics = json.loads((run_dir / "finetune" / "metrics.json").read_text())
    assert [e["step"] for e in metrics["epochs"]] == [16, 32, 48]
    assert len(metrics["resumed_at_step"]) == 1 and metrics["resumed_at_step"][0] in (16, 32)
    scores = ("train_loss", "val_loss", "val_accuracy")
    assert [e[k] for e in metrics["epochs"] for k in scores] == pytest.approx(
        [e[k] for e in history(uninterrupted) for k in scores], rel=1e-5)
    resumed = load_file(str(run_dir / "finetune" / "adapter" / "adapter_model.safetensors"))
    reference = load_file(str(uninterrupted / "finetune" / "adapter" / "adapter_model.safetensors"))
    assert resumed.keys() == reference.keys()
    for name in resumed:
        torch.testing.assert_close(resumed[name], reference[name], rtol=1e-5, atol=1e-6)
    return metrics


@pytest.mark.slow
def test_stopped_run_resumes_from_its_latest_checkpoint(seq_cls_ce_run: tuple[Config, Path, str],
                                                        tmp_path: Path) -> None:
    reference_cfg, reference_dir, _ = seq_cls_ce_run
    cfg = reference_cfg.model_copy(update={"run": reference_cfg.run.model_copy(update={"root": str(tmp_path)})})
    attempt, errors = _run_in_thread(cfg)
    _kill_train_workers_after_first_checkpoint(cfg, attempt)
    attempt.join()
    assert errors, "the run finished before it could be stopped"
    manifest = json.loads((tmp_path / "tiny" / "manifest.json").read_text())
    assert manifest["stages"]["finetune"]["status"] == "failed"

    finetune.run(cfg)  # started again: the same command, the same run

    metrics = _assert_continued_like(tmp_path / "tiny", reference_dir)
    first = json.loads(next((tmp_path / "tiny" / "finetune" / "ray").glob("*/epoch_001/state.json")).read_text())
    assert metrics["epochs"][0] == first["history"][0]  # epoch 1 comes from the checkpoint, not retrained


@pytest.mark.slow
def test_killed_workers_restart_from_the_latest_checkpoint(seq_cls_ce_run: tuple[Config, Path, str],
                                                           tmp_path: Path) -> None:
    reference_cfg, reference_dir, _ = seq_cls_ce_run
    cfg = reference_cfg.model_copy(update={
        "run": reference_cfg.run.model_copy(update={"root": str(tmp_path)}),
        "train": reference_cfg.train.model_copy(update={"max_failures": 1}),
    })
    attempt, errors = _run_in_thread(cfg)
    _kill_train_workers_after_first_checkpoint(cfg, attempt)
    attempt.join()
    assert not errors  # Ray Train restarted the workers (FailureConfig(max_failures=1)) and finished
    _assert_continued_like(tmp_path / "tiny", reference_dir)
