"""`lavia train` for real: a tiny Qwen2.5-VL trained on records the pipeline built."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file, save_file

from lavia_live.cli import main
from lavia_live.contract.prompt import parse_llava_text
from lavia_live.contract.records import read_records
from lavia_live.models.families import encode, load_model
from lavia_live.models.step_classifier import StepClassifier
from training.config import TrainSettings
from training.train.data import LengthGroupedBatches, batch_of, load_examples, load_frames
from training.train.loop import STATE_FILE, Trainer, weighted_token_loss
from training.train.setup import TrainError


def settings(tmp_path: Path, base: Path, records: Path, **kw: object) -> TrainSettings:
    defaults: dict[str, object] = {
        "model": base,
        "train_records": [records],
        "output_dir": tmp_path / "run",
        "method": "full",
        "max_steps": 8,
        "batch_size": 2,
        "learning_rate": 3e-3,
        "warmup_ratio": 0.0,
        "scheduler": "constant",
        "log_every": 1,
        "save_every": 4,
    }
    return TrainSettings.model_validate(defaults | kw)


def params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_full_training_lowers_loss_and_moves_only_trainable_weights(
    tmp_path: Path, tiny_base: Path, demo_records: Path
) -> None:
    trainer = Trainer(settings(tmp_path, tiny_base, demo_records, max_steps=12), progress=False)
    before = params(trainer.model)
    result = trainer.train()
    after = params(trainer.model)
    losses = [h["loss"] for h in result.state.history if "loss" in h]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3
    frozen = [n for n, p in trainer.model.named_parameters() if not p.requires_grad]
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert frozen and all(n.startswith("model.visual.") for n in frozen)
    assert not any(n.startswith("model.visual.merger.") for n in frozen)
    assert all(torch.equal(before[n], after[n]) for n in frozen)
    changed = [n for n in trainable if not torch.equal(before[n], after[n])]
    assert len(changed) == len(trainable)
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 12 and '"tokens_per_s"' in metrics[0]


def test_first_token_weight_counts_each_answers_first_token_more(
    tmp_path: Path, tiny_base: Path, demo_records: Path
) -> None:
    trainer = Trainer(settings(tmp_path, tiny_base, demo_records), progress=False)
    batch = batch_of([trainer.train_set[0], trainer.train_set[1]], trainer.pad_id)
    model = trainer.model.eval()
    labels = batch["labels"]
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        # weight 1 is the model's own loss: the token mean over both answers
        assert torch.allclose(weighted_token_loss(logits, labels, 1.0), model(**batch).loss)
    # a huge weight leaves the mean loss of the two answers' first tokens
    firsts = []
    for row in range(2):
        start = int((labels[row] != -100).nonzero()[0, 0])
        firsts.append(
            torch.nn.functional.cross_entropy(
                logits[row, start - 1 : start], labels[row, start : start + 1]
            )
        )
    heavy = weighted_token_loss(logits, labels, 1e6)
    assert torch.allclose(heavy, torch.stack(firsts).mean(), rtol=1e-3)
    assert not torch.allclose(heavy, weighted_token_loss(logits, labels, 1.0), rtol=1e-2)
    # training with it runs and logs a finite loss
    trainer = Trainer(
        settings(tmp_path / "w", tiny_base, demo_records, max_steps=2, first_token_weight=5),
        progress=False,
    )
    losses = [h["loss"] for h in trainer.train().state.history if "loss" in h]
    assert len(losses) == 2 and all(0 < x < 100 for x in losses)


def test_stop_after_ends_a_run_partway_through_its_schedule(
    tmp_path: Path, tiny_base: Path, demo_records: Path
) -> None:
    def lrs(**kw: object) -> list[float]:
        run = settings(tmp_path / str(len(kw)), tiny_base, demo_records, max_steps=6, **kw)
        result = Trainer(run, progress=False).train()
        assert (result.final_dir / "config.json").exists()
        return [h["lr"] for h in result.state.history if "lr" in h]

    full = lrs(scheduler="cosine")
    partial = lrs(scheduler="cosine", stop_after=3)
    assert len(full) == 6 and len(partial) == 3
    assert partial == full[:3] and partial[-1] > 0.1 * full[0]


def test_saved_checkpoint_gives_identical_logits(
    tmp_path: Path, tiny_base: Path, demo_records: Path
) -> None:
    trainer = Trainer(settings(tmp_path, tiny_base, demo_records, max_steps=2), progress=False)
    result = trainer.train()
    record = read_records(demo_records)[0]
    example = load_examples([demo_records])[0]
    prompt = parse_llava_text(record.prompt_text)
    model = trainer.accelerator.unwrap_model(trainer.model).eval()
    inputs = encode(trainer.loaded, trainer.loaded.family, prompt, load_frames(example)).inputs
    reloaded = load_model(result.final_dir)
    again = encode(reloaded, reloaded.family, prompt, load_frames(example)).inputs
    with torch.no_grad():
        a = model(**inputs).logits
        b = reloaded.model(**again).logits
    assert all(torch.equal(inputs[k], again[k]) for k in inputs)  # processor saved too
    assert torch.equal(a, b)


def test_image_pixels_trains_and_saves_the_model_at_another_frame_size(
    tmp_path: Path, tiny_base: Path, demo_records: Path
) -> None:
    example = load_examples([demo_records])[0]
    prompt = parse_llava_text(read_records(demo_records)[0].prompt_text)

    def grid(model_dir: Path) -> list[int]:
        loaded = load_model(model_dir)
        inputs = encode(loaded, loaded.family, prompt, load_frames(example)).inputs
        return inputs["image_grid_thw"][0].tolist()

    # 112 x 84 frames in 14-pixel patches; a 56 x 56 budget halves each side, rounded to 28
    s = settings(tmp_path, tiny_base, demo_records, max_steps=2, image_pixels=56 * 56)
    result = Trainer(s, progress=False).train()
    before, after = grid(tiny_base), grid(result.final_dir)
    assert before[1:] == [6, 8] and after[1:] == [2, 4] and before[0] == after[0]
    losses = [h["loss"] for h in result.state.history if "loss" in h]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_a_step_classifier_is_trained_and_saved_with_the_model(
    tmp_path: Path, tiny_base: Path, demo_records: Path
) -> None:
    trainer = Trainer(
        settings(
            tmp_path,
            tiny_base,
            demo_records,
            max_steps=2,
            val_records=[demo_records],
            step_classifier_epochs=40,
            step_classifier_lr=3e-3,
        ),
        progress=False,
    )
    final = trainer.train().final_dir
    loaded = load_model(final)
    classifier = StepClassifier.load(loaded)
    assert classifier is not None
    records = [r for r in read_records(demo_records) if r.annotation is not None]
    assert classifier.steps == tuple(sorted({r.annotation.current_step for r in records}))
    info = json.loads((final / "step_classifier.json").read_text(encoding="utf-8"))
    assert info["frames"] == len({r.image[-1] for r in records}) and info["epochs"] == 40
    # it learned the training frames' steps (chance: 1 in 4) in a copy of the vision tower;
    # the model keeps the vision weights its own training gave it
    assert info["train_accuracy"] >= 0.8 and info["val_accuracy"] >= 0.8, info
    own = dict(loaded.model.model.visual.named_parameters())
    assert any(not torch.equal(own[n], p) for n, p in classifier.visual.named_parameters())
    trained = dict(trainer.accelerator.unwrap_model(trainer.model).named_parameters())
    assert all(torch.equal(p, trained[f"model.visual.{n}"]) for n, p in own.items())
    first = records[0]
    with Image.open(demo_records.parent / first.image[-1]) as img:
        assert classifier.read(img.convert("RGB")) in (*classifier.steps, None)


def test_lora_trains_adapters_and_merges_on_save(
    tmp_path: Path, tiny_base: Path, demo_records: Path
) -> None:
    s = settings(tmp_path, tiny_base, demo_records, method="lora", lora_r=4, max_steps=3)
    trainer = Trainer(s, progress=False)
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or ".merger." in n for n in trainable)
    result = trainer.train()
    base = load_file(str(tiny_base / "model.safetensors"))
    merged = load_file(str(result.final_dir / "model.safetensors"))
    assert set(merged) == set(base)  # a plain checkpoint: LoRA merged in, no adapter keys
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    # saved in the published Qwen2.5-VL layout (model.layers.*, visual.*), as SGLang reads it
    llm = {k for k in base if k.startswith("model.layers.") and k.split(".")[-2] in targets}
    llm = {k for k in llm if k.endswith(".weight")}
    assert llm and llm <= changed  # every adapted LLM linear moved
    assert any(k.startswith("visual.merger.") for k in changed)  # the projector trains fully
    assert not any(k.startswith("visual.blocks.") for k in changed)  # vision frozen
    assert not any("embed_tokens" in k for k in changed)
    load_model(result.final_dir)


def test_length_grouped_batches_are_fixed_by_seed_and_epoch() -> None:
    lengths = [5, 300, 20, 290, 7, 310, 15, 305] * 10
    sampler = LengthGroupedBatches(lengths, 4, seed=3)
    assert sampler.epoch(0) == sampler.epoch(0)
    assert sampler.epoch(0) != sampler.epoch(1)
    batches = sampler.epoch(0)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    spread = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches]
    assert sum(spread) / len(spread) < 100  # similar lengths together
    assert list(sampler.iter_from(0, 5)) == batches[5:]


def test_killed_run_resumes_at_its_checkpoint_with_the_same_data_order(
    tmp_path: Path, tiny_base: Path, demo_records: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """kill -9 once a checkpoint exists; the rerun ends with the uninterrupted weights."""
    steps = 16
    straight = Trainer(
        settings(tmp_path / "a", tiny_base, demo_records, max_steps=steps), progress=False
    )
    straight_result = straight.train()
    config = tmp_path / "b.yaml"
    s = settings(tmp_path / "b", tiny_base, demo_records, max_steps=steps)
    config.write_text(yaml.safe_dump({"train": s.model_dump(mode="json")}))
    cmd = [sys.executable, "-m", "lavia_live.cli", "train", "-c", str(config), "--no-progress"]
    # the same thread count as this process (an engine test may have set it to 1): float
    # sums over another number of threads differ in the last bits
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen(cmd, env=env)
    checkpoints = tmp_path / "b" / "run" / "checkpoints"
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if list(checkpoints.glob(f"step-*/{STATE_FILE}")):
            proc.kill()  # SIGKILL mid-run
            break
        time.sleep(0.02)  # polling the file system, not synchronising on time
    proc.wait()
    assert not (tmp_path / "b" / "run" / "final").exists(), "the run ended before the kill"
    capsys.readouterr()
    code = main(cmd[3:])  # the rerun, in this process
    done = capsys.readouterr()
    assert code == 0, done.err
    assert "resumed from step" in done.out and f"trained {steps} steps" in done.out
    a = load_file(str(straight_result.final_dir / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "run" / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_dry_run_and_bad_settings(
    tmp_path: Path, tiny_base: Path, demo_records: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "t.yaml"
    s = settings(tmp_path, tiny_base, demo_records, method="lora")
    config.write_text(yaml.safe_dump({"train": s.model_dump(mode="json")}))
    base = ["train", "-c", str(config)]
    code = main([*base, "--dry-run"])
    done = capsys.readouterr()
    assert code == 0, done.err
    assert "trainable" in done.out and "tokens per example" in done.out
    assert not (tmp_path / "run").exists()
    code = main([*base, "--set", "train.method=qlora"])
    assert code == 2 and "QLoRA needs a CUDA GPU" in capsys.readouterr().err
    with pytest.raises(TrainError, match="no base model"):
        Trainer(TrainSettings(train_records=[demo_records]))


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_llava_family_trains_with_lora(tmp_path: Path, demo_records: Path) -> None:
    from lavia_live.contract.tasks import TaskLibrary
    from training.models.tiny import build_tiny_llava, task_corpus

    base = build_tiny_llava(tmp_path / "llava", task_corpus(TaskLibrary.load().values()))
    s = settings(tmp_path, base, demo_records, method="lora", lora_r=4, max_steps=3)
    trainer = Trainer(s, progress=False)
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert any("multi_modal_projector" in n for n in trainable)
    assert not any("vision_tower" in n for n in trainable)
    result = trainer.train()
    losses = [h["loss"] for h in result.state.history if "loss" in h]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert load_model(result.final_dir).family == "llava"
    with pytest.raises(TrainError, match="image_pixels applies to Qwen"):
        Trainer(settings(tmp_path, base, demo_records, image_pixels=56 * 56), progress=False)


def test_vision_warmup_trains_vision_weights_only_and_is_not_repeated(
    tmp_path: Path, tiny_base: Path, demo_records: Path
) -> None:
    import json

    from lavia_live.models.families import vision_parameters
    from training.train.setup import prepare_model
    from training.train.vision_warmup import REPORT_FILE, WEIGHTS_FILE, last_frames

    s = settings(
        tmp_path,
        tiny_base,
        demo_records,
        freeze_vision=False,
        val_records=[demo_records],
        vision_warmup_epochs=30,
        vision_warmup_lr=3e-3,
    )
    plain = params(prepare_model(s).model)
    loaded = prepare_model(s, warm_up=True, progress=False)
    warmed = params(loaded.model)
    vision = {n for n, _ in vision_parameters(loaded.model, loaded.family)}
    assert any(n.startswith("model.visual.merger.") for n in vision)
    assert all(not torch.equal(plain[n], warmed[n]) for n in vision)
    assert all(torch.equal(plain[n], warmed[n]) for n in plain if n not in vision)
    report = json.loads((tmp_path / "run" / REPORT_FILE).read_text())
    frames = last_frames(load_examples([demo_records]))
    assert report["frames"] == len(frames) and len(report["classes"]) >= 4
    assert report["classes"] == sorted({label for _, label in frames})
    # the frames are learnable: the warm-up fits them (chance is 1 / classes)
    assert report["train_accuracy"] >= 0.9 and report["val_accuracy"] >= 0.9
    # a second start (a resumed run) loads the warm-up instead of repeating it
    again = params(prepare_model(s, warm_up=True, progress=False).model)
    assert all(torch.equal(again[n], warmed[n]) for n in warmed)
    assert json.loads((tmp_path / "run" / REPORT_FILE).read_text()) == report
    # a warm-up left by another model in the run folder is not loaded into this one
    save_file({"model.visual.other": torch.zeros(1)}, str(tmp_path / "run" / WEIGHTS_FILE))
    with pytest.raises(TrainError, match="warm-up of another model"):
        prepare_model(s, warm_up=True, progress=False)


def test_vision_warmup_with_a_frozen_tower_trains_the_merger(
    tmp_path: Path, tiny_base: Path, demo_records: Path
) -> None:
    from training.train.setup import prepare_model

    s = settings(tmp_path, tiny_base, demo_records, vision_warmup_epochs=1)
    plain = params(prepare_model(s).model)
    warmed = params(prepare_model(s, warm_up=True, progress=False).model)
    moved = {n for n in plain if not torch.equal(plain[n], warmed[n])}
    assert moved and all(n.startswith("model.visual.merger.") for n in moved)
