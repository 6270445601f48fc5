"""Make docs/images/demo.jpg: what `hpdm demo` generates (seed 0), 4 frames per class, as a JPEG."""

import platform
import sys
import time

import torch

from hpdm.data.shapes import SHAPES_CLASSES
from hpdm.data.video import contact_sheet
from hpdm.demo import demo_checkpoint
from hpdm.sampling import Sampler
from hpdm.train import load_model

out = sys.argv[1] if len(sys.argv) > 1 else "docs/images/demo.jpg"
model, cfg = load_model(demo_checkpoint())
t0 = time.perf_counter()
gen = Sampler(model, cfg).generate(num=8, labels=torch.arange(8), seed=0, progress=False)
seconds = time.perf_counter() - t0
sheet = contact_sheet(list(gen.video), max_frames=4, labels=SHAPES_CLASSES)
sheet.convert("RGB").save(out, quality=85)
print(
    f"wrote {out}: 8 videos of 16x128x128 in {seconds:.1f} s on {platform.machine()} CPU, torch {torch.__version__}"
)
