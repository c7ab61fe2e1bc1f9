"""Re-render a hook + 10-beat 512x768 short from cached clips: storyboard vs MoviePy, side by side.

Usage: .venv/bin/pip install moviepy && .venv/bin/python bench/render_vs_moviepy.py [--runs 3]

Makes one offline run, then alternates (a) `storyboard run --dir RUN --regen-beats none` as a
subprocess (wall time, imports included; it also measures and normalises loudness in two passes)
and (b) a MoviePy script doing the same composition on the same clips: concatenate, the same
subtitle cues and hook title drawn with TextClip, H.264 veryfast CRF 20 + AAC, no loudness pass.
MoviePy is a bench-only dependency (what peer tools use); the product does not import it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MOVIEPY_SCRIPT = r'''
import json, sys
from pathlib import Path
from moviepy import CompositeVideoClip, TextClip, VideoFileClip, concatenate_videoclips
run, out, font = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
manifest = json.loads((run / "run.json").read_text())
inputs = manifest["artifacts"]["final.mp4"]["inputs"]
clips = [VideoFileClip(str(p)) for p in sorted((run / "clips").glob("clip_*.mp4"))]
base = concatenate_videoclips(clips, method="chain")
layers = [base]
for start, end, text in inputs["cues"]:
    layers.append(TextClip(font=font, text=text, font_size=32, color="white", stroke_color="black", stroke_width=2,
                           method="label").with_start(start).with_end(end).with_position(("center", 768 - 60 - 40)))
layers.append(TextClip(font=font, text=inputs["title"], font_size=45, color="yellow", stroke_color="black", stroke_width=3,
                       method="caption", size=(472, None)).with_start(0).with_end(inputs["durations"][0]).with_position(("center", 20)))
CompositeVideoClip(layers, size=(512, 768)).write_videofile(out, fps=24, codec="libx264", preset="veryfast",
    ffmpeg_params=["-crf", "20", "-pix_fmt", "yuv420p"], audio_codec="aac", audio_fps=48000, logger=None)
'''


def wall(cmd: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    from storyboard.fonts import find_fonts

    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        subprocess.run([sys.executable, "-m", "storyboard.cli", "run", "--idea", "A cat who wants to be a judge"], cwd=cwd, check=True, capture_output=True)
        run_dir = next((cwd / "outputs").iterdir())
        font = str(find_fonts("Nobody believed").path)
        script = cwd / "mp.py"
        script.write_text(MOVIEPY_SCRIPT)
        ours, theirs = [], []
        for _ in range(args.runs):
            ours.append(wall([sys.executable, "-m", "storyboard.cli", "run", "--dir", str(run_dir), "--regen-beats", "none"], cwd))
            theirs.append(wall([sys.executable, str(script), str(run_dir), str(cwd / "moviepy.mp4"), font], cwd))
        result = {
            "storyboard_rerender_s": {"median": round(statistics.median(ours), 2), "all": [round(x, 2) for x in ours]},
            "moviepy_s": {"median": round(statistics.median(theirs), 2), "all": [round(x, 2) for x in theirs]},
            "speedup": round(statistics.median(theirs) / statistics.median(ours), 2),
            "short_s": json.loads((run_dir / "run.json").read_text())["stages"]["render"]["video_s"],
        }
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
