"""Retrain the shipped toy models: ``python -m sae_vlm_plugin.toy.train [--out DIR]``.

Trains the toy CLIP, then the toy LLaVA on its vision tower, and writes ``DIR/clip`` and
``DIR/llava`` in ``save_pretrained`` form (config, safetensors weights, processor with its
tokenizer) with ``training.json`` (the settings, the measured held-out quality and
``recipe_sha256``, the content hash of the code that trained it: ``toy/recipe.py``) and a model
card. The default ``DIR`` is the package's own ``toy/weights``: it replaces the shipped files.
``--only llava`` retrains the LLaVA on the CLIP already in ``DIR/clip``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from sae_vlm_plugin.toy.clip_training import ToyClipTraining, image_processor, train_toy_clip
from sae_vlm_plugin.toy.llava_training import ToyLlavaTraining, train_toy_llava
from sae_vlm_plugin.toy.recipe import recipe_sha256

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


def save_llava(model: Any, processor: Any, out: Path, record: dict[str, Any]) -> Path:
    """``model`` and its ``LlavaProcessor`` in ``save_pretrained`` form, plus ``training.json``."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "README.md").write_text(llava_model_card(record, out))
    return out


def _shipped_mb(out: Path) -> float:
    return sum(f.stat().st_size for f in out.iterdir() if f.name != "README.md") / 1e6


def clip_model_card(record: dict[str, Any], out: Path) -> str:
    """The model card: what the toy CLIP is, how it was trained, what it measured."""
    settings = record["settings"]
    accuracy = record["zero_shot_accuracy"]
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
- Files: {_shipped_mb(out):.1f} MB (config, safetensors weights, image processor, tokenizer).

Held-out zero-shot accuracy ({settings["n_heldout"]} images of seed {settings["heldout_seed"]},
prompts "a red shape", "a circle", "a striped shape", "a small shape"):

| attribute | accuracy |
|---|---|
{rows}

Not a real CLIP: it knows only this world's shapes, colours, textures and sizes.
"""


def llava_model_card(record: dict[str, Any], out: Path) -> str:
    """The model card of the toy LLaVA."""
    settings = record["settings"]
    accuracy = record["describe_accuracy"]
    rows = "\n".join(f"| {name} | {value:.1%} |" for name, value in accuracy.items())
    return f"""# toy-llava

A small transformers `LlavaForConditionalGeneration` that talks about the toy world of
`sae_vlm_plugin.toy`: its vision tower is the toy CLIP's (frozen), read as llava-1.5 reads
CLIP (`vision_feature_layer=-2`, CLS dropped), through a two-layer GELU projector into a Llama
of {settings["text_layers"]} blocks, width {settings["text_width"]}, over a word-level vocabulary. It answers
"Describe the image.", "What colour / shape / texture ...?", the one-word question of Table 3
and the ten appendix-B steering prompts with templated replies that name the object
(`sae_vlm_plugin.toy.llava_training.answer`); a blank white image is "a blank white image".
Load it with `VisionModel("toy-llava")`, `sae_vlm_plugin.toy.load_toy_llava()`, or
`transformers.LlavaForConditionalGeneration.from_pretrained(<this directory>)` with
`LlavaProcessor.from_pretrained(<this directory>)` (chat template included).

- Data: {settings["n_train"]} world images (seed {settings["train_seed"]}) plus
  {round(settings["n_train"] * settings["blank_fraction"])} blank white ones, a random prompt
  per sample and step.
- Training: {settings["steps"]} steps of batch {settings["batch_size"]}, AdamW lr {settings["lr"]}
  (warm-up {settings["warmup_steps"]}, cosine), cross-entropy on the answer tokens; projector and
  Llama trained, vision tower frozen; seed {settings["seed"]}, {record["threads"]} CPU threads,
  {record["train_seconds"]} s, torch {record["torch"]}. Retrain with
  `python -m sae_vlm_plugin.toy.train`.
- Files: {_shipped_mb(out):.1f} MB (config, safetensors weights with the vision tower, processor,
  tokenizer, chat template).

Held-out quality ({settings["n_heldout"]} images of seed {settings["heldout_seed"]}): the greedy answer to
"Describe the image." names the right

| attribute | fraction |
|---|---|
{rows}

Not a real LLaVA: it knows only this world and these prompts.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    parser.add_argument("--clip-steps", type=int, default=ToyClipTraining.steps)
    parser.add_argument("--llava-steps", type=int, default=ToyLlavaTraining.steps)
    parser.add_argument("--only", choices=("clip", "llava"), help="retrain one model only")
    args = parser.parse_args(argv)
    # Hashed before training, so that an edit made while it runs does not pass for trained.
    recipe = {model: recipe_sha256(model) for model in ("clip", "llava")}
    if args.only != "llava":
        training = ToyClipTraining(steps=args.clip_steps)
        clip, tokenizer, report = train_toy_clip(training)
        record = {
            "settings": dataclasses.asdict(training),
            "recipe_sha256": recipe["clip"],
            "torch": torch.__version__,
            **report,
        }
        save_clip(clip, tokenizer, args.out / "clip", record)
        print(json.dumps(report, indent=2))
    if args.only != "clip":
        from transformers import CLIPModel

        clip = CLIPModel.from_pretrained(args.out / "clip").eval()
        llava_training = ToyLlavaTraining(steps=args.llava_steps)
        llava, processor, llava_report = train_toy_llava(clip, llava_training)
        llava_record = {
            "settings": dataclasses.asdict(llava_training),
            "recipe_sha256": recipe["llava"],
            "torch": torch.__version__,
            **llava_report,
        }
        save_llava(llava, processor, args.out / "llava", llava_record)
        print(json.dumps(llava_report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
