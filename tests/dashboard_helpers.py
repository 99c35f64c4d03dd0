"""Shared pieces of the dashboard tests: a random JumpReLU SAE and a headless Chromium runner."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch
from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig
from sae_lens.saes.sae import SAEMetadata

from sae_vlm_plugin.tiny import models as tm

HOOK = "blocks.1.hook_resid_post"
CHROMIUM = "/usr/bin/chromium"
EXTERNAL_URL = re.compile(r"(?:https?|ftp|wss?):|(?<![\w:])//[a-z0-9-]+\.[a-z]", re.IGNORECASE)


def random_sae(d_sae: int, tokens: str, seed: int = 0, matryoshka: bool = True) -> JumpReLUSAE:
    """A JumpReLU SAE with random weights (threshold 0) that fires on most tiny-CLIP rows."""
    extra = {"group_fractions": [0.25, 0.75]} if matryoshka else {}
    cfg = JumpReLUSAEConfig(
        d_in=tm.WIDTH, d_sae=d_sae, metadata=SAEMetadata(hook_name=HOOK, tokens=tokens, **extra)
    )
    sae = JumpReLUSAE(cfg)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(tm.WIDTH, d_sae, generator=generator))
        sae.b_enc.copy_(-2.0 + torch.randn(d_sae, generator=generator))
        sae.W_dec.copy_(
            torch.nn.functional.normalize(torch.randn(d_sae, tm.WIDTH, generator=generator), dim=1)
        )
    return sae


def chromium(url: str, screenshot: Path | None = None, offline: bool = False) -> str:
    """The DOM of ``url`` after its scripts ran (and a screenshot), from headless Chromium;
    ``offline`` sends every request for a host to a closed port and resolves no name."""
    if not Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is None:
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    with tempfile.TemporaryDirectory() as profile:
        base = [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=5000",
            "--window-size=1200,1000",
        ]
        if offline:
            base += ["--proxy-server=http://127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND"]
        if screenshot is not None:
            subprocess.run(
                [*base, f"--screenshot={screenshot}", url],
                check=True,
                capture_output=True,
                timeout=120,
            )
        done = subprocess.run(
            [*base, "--dump-dom", url], check=True, capture_output=True, text=True, timeout=120
        )
    return done.stdout


def status(dom: str) -> dict[str, str]:
    """The ``data-*`` attributes of the page's ``#status`` element."""
    match = re.search(r'<div id="status"([^>]*)>', dom)
    assert match, "no #status element in the DOM"
    return dict(re.findall(r'data-([\w-]+)="([^"]*)"', match.group(1)))
