"""Retrain the shipped toy models: ``python -m sae_vlm_plugin.toy.train [--out DIR]``.

Writes ``DIR/clip`` in ``save_pretrained`` form (config, safetensors weights, image processor,
tokenizer) with ``training.json`` (the settings and the measured held-out quality). The
default ``DIR`` is the package's own ``toy/weights``, i.e. it replaces the shipped files.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from sae_vlm_plugin.toy.clip_training import ToyClipTraining, image_processor, train_toy_clip

WEIGHTS_DIR = Path(__file__).parent / "weights"


def save_clip(model: Any, tokenizer: Any, out: Path, record: dict[str, Any]) -> Path:
    """``model`` / tokenizer / processor in ``save_pretrained`` form, plus ``training.json``."""
    from transformers import CLIPProcessor

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    CLIPProcessor(image_processor=image_processor(), tokenizer=tokenizer).save_pretrained(out)
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "README.md").write_text(clip_model_card(record, out))
    return out


def clip_model_card(record: dict[str, Any], out: Path) -> str:
    """The model card: what the toy CLIP is, how it was trained, what it measured."""
    settings = record["settings"]
    accuracy = record["zero_shot_accuracy"]
    n_bytes = sum(f.stat().st_size for f in out.iterdir() if f.name != "README.md")
    rows = "\n".join(f"| {name} | {value:.1%} |" for name, value in accuracy.items())
    return f"""# toy-clip

A small transformers `CLIPModel` (vision and text towers) trained contrastively on the toy
world of `sae_vlm_plugin.toy` (one coloured, textured object per image), so that
SAEs trained through the package meet a representation that has actually learned something.
Load it with `VisionModel("toy-clip")`, `sae_vlm_plugin.toy.load_toy_clip()`, or
`transformers.CLIPModel.from_pretrained(<this directory>)`.

- Architecture: ViT with {settings["vision_layers"]} blocks, width {settings["width"]},
  {settings["heads"]} heads, patch {settings["patch_size"]} on 48 x 48 images (36 patches + CLS);
  text transformer with {settings["text_layers"]} blocks over a word-level vocabulary;
  projection {settings["projection_dim"]}.
- Data: {settings["n_train"]} world images (seed {settings["train_seed"]}), a random templated
  caption per image and step (each attribute named with probability 1/2, the full caption a
  third of the time).
- Training: {settings["steps"]} steps of batch {settings["batch_size"]}, AdamW lr
  {settings["lr"]} (warm-up {settings["warmup_steps"]}, cosine), weight decay
  {settings["weight_decay"]}, CLIP loss with every true caption of the batch as a positive;
  seed {settings["seed"]}, {record["threads"]} CPU threads, {record["train_seconds"]} s,
  torch {record["torch"]}. Retrain with `python -m sae_vlm_plugin.toy.train`.
- Files: {n_bytes / 1e6:.1f} MB (config, safetensors weights, image processor, tokenizer).

Held-out zero-shot accuracy ({settings["n_heldout"]} images of seed {settings["heldout_seed"]},
prompts "a red shape", "a circle", "a striped shape", "a small shape"):

| attribute | accuracy |
|---|---|
{rows}

Not a real CLIP: it knows only this world's shapes, colours, textures and sizes.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    parser.add_argument("--clip-steps", type=int, default=ToyClipTraining.steps)
    args = parser.parse_args(argv)
    training = ToyClipTraining(steps=args.clip_steps)
    model, tokenizer, report = train_toy_clip(training)
    record = {"settings": dataclasses.asdict(training), "torch": torch.__version__, **report}
    save_clip(model, tokenizer, args.out / "clip", record)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
